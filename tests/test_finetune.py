"""Fine-tuning: labels, class weights, SFT packing and loss mask, and tiny end-to-end runs."""

import json

import keras
import numpy as np
import pytest

from conftest import run_module
from kerasllm.config import Config
from kerasllm.errors import ConfigError, DataError
from kerasllm.models import GPT
from kerasllm.models.classifier import SequenceClassifier
from kerasllm.tokenizers import CharTokenizer
from kerasllm.training.finetune import (
    class_weight_dict,
    encode_texts,
    label_ids,
    label_names,
    pack_sft_examples,
    read_prompt_response,
    sft_loss,
)


def test_labels_are_mapped_sorted_and_checked():
    assert label_names(["pos", "neg", "pos"]) == ["neg", "pos"]
    assert label_names([10, 2, "2"]) == ["2", "10"]  # integers sort numerically
    np.testing.assert_array_equal(label_ids([1, 0, "1"], ["0", "1"]), [1, 0, 1])
    with pytest.raises(DataError, match=r"test\.tsv: labels '2' are not among the model's labels '0', '1'"):
        label_ids(["0", "2"], ["0", "1"], source="test.tsv")
    with pytest.raises(DataError, match="every example has the label '1'.*at least 2"):
        label_names(["1", "1"], source="train.tsv")


def test_class_weights():
    y = np.array([0, 0, 0, 1])
    assert class_weight_dict("", ["0", "1"], y) is None
    assert class_weight_dict("balanced", ["0", "1"], y) == {0: 4 / 6, 1: 2.0}
    assert class_weight_dict("1:3", ["0", "1"], y) == {0: 1.0, 1: 3.0}
    with pytest.raises(ConfigError, match="class_weights.*LABEL:WEIGHT"):
        class_weight_dict("7:2", ["0", "1"], y)


def test_encode_texts_right_pads_and_truncates():
    tok = CharTokenizer.train(["abcdef"])
    ids = encode_texts(tok, ["ab", "abcdef"], 4)
    assert ids.shape == (2, 4)
    assert list(ids[0, 2:]) == [tok.pad_id] * 2
    assert tok.decode(ids[1]) == "abcd"


def test_sft_packing_masks_prompts_and_appends_eos():
    tok = CharTokenizer.train(["abcxyz:"])
    x, y, w, seg = pack_sft_examples(tok, ["ab:", "c:", "abc:"], ["xy", "z", "xyz"], block_size=12)
    # <bos>ab:xy<eos> (7) + <bos>c:z<eos> (5) fill a 13-token row; the third starts a new row.
    assert x.shape == y.shape == w.shape == seg.shape == (2, 12)
    assert seg[0].tolist() == [1] * 7 + [2] * 5 and seg[1].tolist() == [1] * 9 + [0] * 3
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    scored = [tok.decode(row[m > 0], skip_special_tokens=False) for row, m in zip(y, w)]
    assert scored == ["xy<eos>z<eos>", "xyz<eos>"]
    assert tok.decode(x[0], skip_special_tokens=False).startswith("<bos>ab:xy<eos><bos>c:z")
    assert w[1, -1] == 0 and y[1, -1] == tok.pad_id  # padding is never scored


def test_sft_without_packing_gives_one_example_per_row():
    tok = CharTokenizer.train(["abcxyz:"])
    x, _, w, seg = pack_sft_examples(tok, ["ab:", "c:"], ["xy", "z"], block_size=12, pack=False)
    assert x.shape == (2, 12) and set(seg[0]) == {0, 1} and set(seg[1]) == {0, 1}


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_packed_rows_compute_what_each_example_computes_alone(positions):
    # Segment ids make attention block-diagonal and restart positions: the logits of each
    # example inside a packed row equal the logits of that example run on its own.
    keras.utils.set_random_seed(0)
    model = GPT(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, positions=positions)
    first, second = np.array([[1, 2, 3, 4, 5]]), np.array([[6, 7, 8, 9]])
    packed = np.concatenate([first, second, [[0, 0, 0]]], axis=1)  # (1, 12)
    segments = np.array([[1] * 5 + [2] * 4 + [0] * 3])
    logits = np.asarray(model({"token_ids": packed, "segment_ids": segments}))
    np.testing.assert_allclose(logits[:, :5], np.asarray(model(first)), atol=1e-5)
    np.testing.assert_allclose(logits[:, 5:9], np.asarray(model(second)), atol=1e-5)
    unsegmented = np.asarray(model(packed))  # without segment ids the second example sees the first
    assert np.abs(unsegmented[:, 5:9] - logits[:, 5:9]).max() > 1e-3


def test_sft_loss_ignores_prompt_tokens_on_a_hand_built_batch():
    # 1 row, 6 targets: positions 0-2 are prompt targets, 3-4 response, 5 padding.
    y = np.array([[4, 5, 6, 7, 3, 0]])
    w = np.array([[0, 0, 0, 1, 1, 0]], dtype="float32")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 6, 9)).astype("float32")
    loss = float(sft_loss()(y, logits, sample_weight=w))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    by_hand = -(log_probs[0, 3, 7] + log_probs[0, 4, 3]) / 2  # the mean over response targets only
    assert loss == pytest.approx(by_hand, rel=1e-5)
    changed = logits.copy()
    changed[0, :3] = rng.normal(size=(3, 9)) * 10  # anything at prompt (and pad) positions ...
    changed[0, 5] = 100.0
    other_targets = y.copy()
    other_targets[0, :3] = [1, 2, 8]
    assert float(sft_loss()(other_targets, changed, sample_weight=w)) == pytest.approx(loss, rel=1e-6)  # ... is ignored


def test_read_prompt_response_errors(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"sft\.jsonl:2: expected a string field 'response'"):
        read_prompt_response(path)
    path.write_text('{"q": "a", "a": "b"}\n')
    assert read_prompt_response(path, "q", "a") == (["a"], ["b"])


# --- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 2-layer char GPT pretrained for a few steps on text with the words of the task."""
    from kerasllm.config import load_config
    from kerasllm.training import pretrain

    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    words = {"1": ["good", "great", "superb"], "0": ["bad", "awful", "dull"]}
    lines, rows = [], ["sentence\tlabel"]
    for i in range(600):
        label = str(rng.integers(2))
        text = f"a {rng.choice(words[label])} film"
        lines.append(text + ".")
        if i < 160:
            rows.append(f"{text}\t{label}")
    (root / "corpus.txt").write_text(" ".join(lines))
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    config = load_config("default", [
        f"data.dataset=\"{root / 'corpus.txt'}\"", "model.n_layer=2", "model.n_head=2", "model.n_embd=32",
        "model.block_size=32", "train.batch_size=8", "train.max_steps=4", "train.eval_interval=4",
        "train.eval_steps=1", "train.warmup_steps=1", "train.jit_compile=false",
    ])
    pretrain(config, root / "lm", verbose=0)
    return root


def _finetune_config(root, *overrides):
    config = Config(name="t")
    for item in [f"data.dataset=\"{root / 'train.tsv'}\"", "train.batch_size=16", "train.max_steps=12",
                 "train.eval_interval=6", "train.warmup_steps=2", "train.learning_rate=3e-3",
                 "train.jit_compile=false", "finetune.epochs=5", *overrides]:
        config.override(item)
    return config


@pytest.mark.slow
def test_finetune_classifier_end_to_end(pretrained, tmp_path):
    from kerasllm.training import load_run
    from kerasllm.training.finetune import finetune

    config = _finetune_config(pretrained, "finetune.drop_blocks=1", "finetune.add_dense=1",
                              "finetune.freeze_blocks=1", f"finetune.test_data=\"{pretrained / 'train.tsv'}\"")
    model, _, metrics = finetune(config, pretrained / "lm", tmp_path / "clf", verbose=0)
    assert metrics["steps"] == 12 and metrics["labels"] == ["0", "1"]
    assert 0 < metrics["trainable_parameters"] < metrics["parameters"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    log = (tmp_path / "clf" / "log.csv").read_text().splitlines()
    losses = [float(line.split(",")[2]) for line in log[1:]]
    assert losses[-1] < losses[0]  # training makes progress
    _, tokenizer, loaded = load_run(tmp_path / "clf")
    assert isinstance(loaded, SequenceClassifier) and len(loaded.backbone.blocks) == 1
    assert json.loads((tmp_path / "clf" / "finetune.json").read_text())["labels"] == ["0", "1"]
    ids = encode_texts(tokenizer, ["a good film"], 32)
    np.testing.assert_allclose(np.array(loaded(ids)), np.array(model(ids)), atol=1e-5)


@pytest.mark.slow
def test_finetune_lora_and_sft_end_to_end(pretrained, tmp_path):
    from kerasllm.training import load_run
    from kerasllm.training.finetune import finetune

    _, _, metrics = finetune(_finetune_config(pretrained, "finetune.lora_rank=2"), pretrained / "lm",
                             tmp_path / "lora", verbose=0)
    assert metrics["trainable_parameters"] < metrics["parameters"] / 4
    _, _, merged = load_run(tmp_path / "lora")
    assert not any(getattr(layer, "lora_enabled", False) for layer in merged._flatten_layers())

    sft = pretrained / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"q{i % 3}?", "response": f"a {i % 3}"}) + "\n" for i in range(30)))
    config = _finetune_config(pretrained, f"data.dataset=\"{sft}\"", "finetune.task=sft", "train.batch_size=4")
    model, tokenizer, metrics = finetune(config, pretrained / "lm", tmp_path / "sft", verbose=0)
    assert metrics["task"] == "sft" and metrics["val_loss"] is not None
    assert model(np.zeros((1, 8), "int32")).shape == (1, 8, tokenizer.vocabulary_size)


@pytest.mark.slow
def test_finetune_cli_errors_are_one_line(pretrained, tmp_path):
    bad = tmp_path / "one_class.tsv"
    bad.write_text("sentence\tlabel\nfine\t1\ngood\t1\n")
    result = run_module("kerasllm.recipes.finetune", "--from", pretrained / "lm", "--data", bad,
                        "--output", tmp_path / "out", "--set", "train.jit_compile=false")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error:" in result.stderr and "one_class.tsv" in result.stderr and "at least 2" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_module("kerasllm.recipes.finetune", "--from", pretrained / "lm", "--data",
                        pretrained / "train.tsv", "--text-column", "review", "--output", tmp_path / "out")
    assert result.returncode == 2 and "review" in result.stderr and "Traceback" not in result.stderr
