"""Fine-tuning: labels, class weights, SFT packing and loss mask, the size rule, best-pass
selection, the output directory's guards, and tiny end-to-end runs."""

import json

import keras
import numpy as np
import pytest

from conftest import run_module
from kerasllm.config import Config
from kerasllm.errors import ConfigError, DataError, RunError
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
    with pytest.raises(DataError, match=r"sft\.jsonl, line 2: expected a string field 'response'"):
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


# --- the size rule -----------------------------------------------------------------------------
@pytest.mark.parametrize("n,epochs,rate", [(1_000, 10, 2e-4), (4_000, 6, 3e-4), (16_000, 4, 4e-4), (67_000, 2, 5e-4)])
def test_size_rule_gives_the_documented_epochs_and_rate(n, epochs, rate):
    from kerasllm.training.finetune import size_schedule

    config = Config()
    config.override("train.batch_size=32")
    sized = size_schedule(config, n)
    per_epoch = -(-n // 32)
    assert sized.finetune.epochs == epochs and sized.train.learning_rate == pytest.approx(rate)
    assert sized.train.max_steps == epochs * per_epoch
    assert sized.train.warmup_steps == round(0.06 * epochs * per_epoch)
    assert sized.train.min_lr == pytest.approx(rate / 10)
    assert sized.train.eval_interval == min(per_epoch, 500)  # every epoch, at most every 500 steps
    assert config.train.max_steps == 2000 and config.finetune.epochs == 3  # the input is not changed


def test_size_rule_keeps_what_the_user_set():
    from kerasllm.training.finetune import size_schedule

    config = Config()
    for item in ["train.batch_size=10", "train.learning_rate=1e-4", "finetune.epochs=7", "train.eval_interval=5"]:
        config.override(item)
    sized = size_schedule(config, 100)
    assert (sized.finetune.epochs, sized.train.max_steps, sized.train.learning_rate) == (7, 70, 1e-4)
    assert sized.train.eval_interval == 5
    config.override("finetune.lora_rank=4")
    config.override("train.learning_rate=1e-3")  # given, even at its default value: kept
    assert size_schedule(config, 100).train.learning_rate == pytest.approx(1e-3)
    unset = Config()
    unset.override("finetune.lora_rank=4")  # the rate not given: the rule's, x4 for LoRA
    assert size_schedule(unset, 100).train.learning_rate == pytest.approx(8e-4)
    config.override("train.max_steps=30")  # an explicit step count: epochs passes capped by it, as before
    sized = size_schedule(config, 100)
    assert (sized.train.max_steps, sized.train.learning_rate, sized.train.eval_interval) == (30, 1e-3, 5)
    config.override("train.max_steps=2000")
    config.override("finetune.size_defaults=false")
    assert size_schedule(config, 100).train.max_steps == 70  # 7 epochs of 10 steps


# --- fast runs from an untrained backbone ------------------------------------------------------
def write_untrained_run(path):
    """A run directory holding an untrained 1-layer char GPT: what finetune loads, in a second."""
    from kerasllm.models import build_model
    from kerasllm.training.rundir import RunDir

    tokenizer = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz ."])
    config = Config(name="lm")
    for item in ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16"]:
        config.override(item)
    keras.utils.set_random_seed(0)
    model = build_model(config.model, vocab_size=tokenizer.vocabulary_size)
    run = RunDir(path).create()
    tokenizer.save(run.tokenizer_dir)
    config.save(run.config_path)
    run.save_model(model)
    run.record("lm")
    return run.path


def write_keyword_set(path, n, flip=False, seed=0):
    """`n` rows `a <keyword> film<TAB>label` where the keyword decides the label (`flip`: the
    opposite label)."""
    rng = np.random.default_rng(seed)
    words = {1: ["good", "great", "superb"], 0: ["bad", "awful", "dull"]}
    rows = ["sentence\tlabel"]
    for _ in range(n):
        label = int(rng.integers(2))
        rows.append(f"a {rng.choice(words[label])} film\t{1 - label if flip else label}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrained")
    write_untrained_run(root / "lm")
    write_keyword_set(root / "train.tsv", 96)
    write_keyword_set(root / "flipped.tsv", 48, flip=True, seed=1)
    return root


def _small(root, *overrides):
    config = Config(name="t")
    for item in [f"data.dataset=\"{root / 'train.tsv'}\"", "train.batch_size=16", "train.max_steps=12",
                 "train.eval_interval=4", "train.warmup_steps=1", "train.learning_rate=1e-2",
                 "train.jit_compile=false", *overrides]:
        config.override(item)
    return config


def test_finetune_leaves_the_callers_config_alone_and_writes_baselines(untrained, tmp_path):
    from kerasllm.training.finetune import finetune
    from kerasllm.training.rundir import RunDir

    config = _small(untrained, "finetune.epochs=100")
    before = config.to_dict()
    _, _, metrics = finetune(config, untrained / "lm", tmp_path / "clf", log=lambda _: None, verbose=0)
    assert config.to_dict() == before  # model, max_steps, max_length: all resolved on a copy
    saved = load_config_file(tmp_path / "clf")
    assert saved.model.n_embd == 16 and saved.finetune.max_length == 16 and saved.train.max_steps == 12
    for scorer in ("model", "majority", "naive_bayes"):
        assert set(metrics["val"][scorer]) == {"accuracy", "macro_f1", "per_class"}
        assert set(metrics["val"][scorer]["per_class"]["1"]) == {"precision", "recall"}
    assert metrics["val"]["naive_bayes"]["accuracy"] == 1.0  # the keyword decides the label
    assert "bag-of-words baseline" in metrics["verdict"] and metrics["val"]["features"] == "words"
    assert json.loads(RunDir(tmp_path / "clf").metrics_path.read_text())["val"] == metrics["val"]
    assert RunDir(tmp_path / "clf").kind() == "classifier"


def test_model_dropout_given_for_finetuning_drops_out_in_the_backbone_with_the_same_weights(untrained):
    from kerasllm.training.finetune.classify import build_classifier
    from kerasllm.training.finetune.common import resolve_model
    from kerasllm.training.rundir import load_run

    pretrained, tokenizer, lm = load_run(untrained / "lm")
    assert resolve_model(_small(untrained), pretrained, tokenizer).model.dropout == 0.0  # the pretrained run's
    resolved = resolve_model(_small(untrained, "model.dropout=0.3"), pretrained, tokenizer)
    assert resolved.model.dropout == 0.3 and resolved.model.n_embd == 16  # the rest of [model] is the run's
    backbone = build_classifier(resolved, lm, tokenizer, ["0", "1"]).backbone
    assert backbone is not lm and backbone.dropout == 0.3 and lm.dropout == 0.0
    ids = encode_texts(tokenizer, ["a good film", "a dull film"], 16)
    np.testing.assert_allclose(backbone.features(ids, training=False), lm.features(ids, training=False), rtol=1e-6)
    assert not np.allclose(backbone.features(ids, training=True), lm.features(ids, training=True))


def load_config_file(run_dir):
    from kerasllm.config import load_config

    return load_config(str(run_dir / "config.toml"))


def test_the_best_validation_pass_is_the_model_kept(untrained, tmp_path):
    # Validation labels are the opposite of the training labels: the better the model learns
    # the training set, the worse it does on validation, so validation peaks early.
    from kerasllm.data.batches import encode_texts as encode
    from kerasllm.data.readers import read_labelled
    from kerasllm.training.finetune import finetune

    config = _small(untrained, f"finetune.val_data=\"{untrained / 'flipped.tsv'}\"", "finetune.select=val_loss",
                    "finetune.patience=2", "finetune.epochs=100", "train.max_steps=20")
    model, tokenizer, metrics = finetune(config, untrained / "lm", tmp_path / "best", log=lambda _: None, verbose=0)
    rows = (tmp_path / "best" / "log.csv").read_text().splitlines()
    column = rows[0].split(",").index("val_loss")
    val_losses = [float(row.split(",")[column]) for row in rows[1:]]
    best = int(np.argmin(val_losses))
    assert best < len(val_losses) - 1, val_losses  # it does peak early
    # Early stopping: training stops `patience` passes after the best one (5 passes planned).
    assert metrics["evaluations"] == len(val_losses) == min(5, best + 1 + 2)
    assert metrics["stopped_early"] == (len(val_losses) < 5)
    assert metrics["selected_step"] == 4 * (best + 1) and metrics["select"] == "val_loss"
    assert metrics["steps"] == 4 * len(val_losses)
    texts, labels = read_labelled(untrained / "flipped.tsv")
    logits = np.asarray(model(encode(tokenizer, texts, 16)), dtype=np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    kept_loss = -log_probs[np.arange(len(labels)), labels].mean()
    assert kept_loss == pytest.approx(val_losses[best], rel=1e-4)  # the restored weights are that pass's


@pytest.mark.slow
def test_the_output_is_never_the_source_run_nor_another_kind_of_run(untrained, tmp_path):
    import shutil

    from kerasllm.recipes.finetune import main
    from kerasllm.training.finetune import finetune
    from kerasllm.training.rundir import RunDir

    with pytest.raises(RunError, match="is the pretrained run given as --from"):
        finetune(_small(untrained), untrained / "lm", untrained / "lm", verbose=0)
    args = ["--from", str(untrained / "lm"), "--data", str(untrained / "train.tsv"), "--set", "train.max_steps=2",
            "--set", "train.eval_interval=2", "--set", "train.jit_compile=false"]
    with pytest.raises(RunError, match="is the pretrained run given as --from"):
        main([*args, "--output", str(untrained / "lm"), "--overwrite"])
    assert RunDir(untrained / "lm").model_path.is_file()  # --overwrite did not touch the source
    other = tmp_path / "other_lm"
    shutil.copytree(untrained / "lm", other)
    with pytest.raises(RunError, match="holds a lm run.*--overwrite"):
        main([*args, "--output", str(other)])
    assert RunDir(other).kind() == "lm"
    main([*args, "--output", str(other), "--overwrite"])
    assert RunDir(other).kind() == "classifier" and RunDir(other).finetune_path.is_file()
