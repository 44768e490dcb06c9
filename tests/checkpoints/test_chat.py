"""Chat checkpoints: SFT on `{"messages": [...]}` rows rendered with the checkpoint's chat
template (loss on assistant turns only), and `generate --chat`."""

import csv
import json

import keras_hub
import numpy as np
import pytest

from kerasllm.checkpoints import load_pretrained
from kerasllm.errors import DataError

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 320
CONVERSATION = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4, of course"}]


def chat_tokenizer_json():
    """A tiny byte-level BPE with ChatML's special tokens (ids 0-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["system user assistant hello there, of course 2+2? 4 hi terse"] * 20, trainer)
    return hf.to_str()


def write_qwen2(folder, chat_template=CHATML):
    """A tiny random Qwen2 checkpoint (keras-hub's export) with a ChatML tokenizer."""
    backbone = keras_hub.models.QwenBackbone(
        vocabulary_size=VOCAB, num_layers=2, hidden_dim=32, intermediate_dim=64, num_query_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, layer_norm_epsilon=1e-6,
    )
    keras_hub.models.QwenCausalLM(backbone=backbone, preprocessor=None).export_to_transformers(str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, use_sliding_window=False, max_position_embeddings=64)))
    (folder / "tokenizer.json").write_text(chat_tokenizer_json())
    tokenizer_config = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    if chat_template:
        tokenizer_config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory):
    return write_qwen2(tmp_path_factory.mktemp("qwen2_chat"))


def write_chat_jsonl(path, conversations):
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations), encoding="utf-8")
    return path


def test_chat_rows_put_the_loss_on_exactly_the_assistant_tokens(chat_checkpoint):
    from kerasllm.training.finetune.sft import pack_chat_examples

    _, tokenizer, _ = load_pretrained(chat_checkpoint)
    x, y, w, seg = pack_chat_examples(tokenizer, [CONVERSATION, CONVERSATION[:3]], block_size=63, pack=False)
    rendered = tokenizer.apply_chat_template(CONVERSATION)
    ids, mask = tokenizer.encode_chat(CONVERSATION)
    n = len(ids)
    row = np.concatenate([x[0, :1], y[0]])
    np.testing.assert_array_equal(row[:n], ids)  # the whole rendering, nothing dropped or added
    assert tokenizer.decode(row[:n], skip_special_tokens=False) == rendered
    # Targets with weight 1 are the assistant turns (content + the template's <|im_end|>\n), no more.
    scored = tokenizer.decode(y[0][w[0] > 0], skip_special_tokens=False)
    assert scored == "hello there<|im_end|>\n4, of course<|im_end|>\n"
    assert w[0, n - 1:].sum() == 0 and (seg[0, :n] == 1).all() and (seg[0, n:] == 0).all()
    # The unscored targets are everything else: system, user, role headers.
    unscored = tokenizer.decode(y[0][: n - 1][w[0][: n - 1] == 0], skip_special_tokens=False)
    assert "hello there" not in unscored and unscored.endswith("<|im_start|>assistant\n")
    assert "You are terse." in unscored and "2+2?" in unscored
    assert tokenizer.decode(y[1][w[1] > 0], skip_special_tokens=False) == "hello there<|im_end|>\n"
    np.testing.assert_array_equal(mask[1:], w[0, : n - 1])


SHORT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]


@pytest.fixture(scope="module")
def chat_run(chat_checkpoint, tmp_path_factory):
    """`(run directory, log lines)` of an SFT run on chat rows from the tiny Qwen2 checkpoint."""
    from kerasllm.config import Config
    from kerasllm.training.finetune import finetune

    folder = tmp_path_factory.mktemp("chat_sft")
    data = write_chat_jsonl(folder / "chat.jsonl", [CONVERSATION, SHORT] * 12)
    config = Config(name="chat")
    for assignment in ("data.dataset=" + json.dumps(str(data)), 'finetune.task="sft"', "train.batch_size=4",
                       "train.max_steps=48", "train.eval_interval=8", "train.learning_rate=1e-2", "train.warmup_steps=1",
                       "train.min_lr=1e-3", "train.jit_compile=false", "finetune.epochs=100", "finetune.patience=0",
                       'finetune.select="last"'):
        config.override(assignment)
    lines = []
    _, tokenizer, metrics = finetune(config, chat_checkpoint, folder / "sft", log=lines.append, verbose=0)
    assert tokenizer.chat_template == CHATML and metrics["task"] == "sft"
    return folder / "sft", lines


def test_sft_on_chat_rows_lowers_the_assistant_loss(chat_run):
    run, lines = chat_run
    with open(run / "log.csv", newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    assert any("sft: 24 examples" in line and "(198 response targets)" in line for line in lines), lines


# Each way of decoding compiles its own loop: the quick loop keeps the first.
@pytest.mark.parametrize("flags", [["--no-stream"], pytest.param([], marks=pytest.mark.slow),
                                   pytest.param(["--num-beams", "2"], marks=pytest.mark.slow)])
def test_generate_chat_renders_the_prompt_and_stops_at_the_end_of_turn(chat_run, flags, capsys):
    from kerasllm.recipes.generate import main

    run, _ = chat_run
    main(["--model", str(run), "--chat", "--prompt", "hi", "--temperature", "0", "--max-new-tokens", "24", *flags])
    # The fine-tuned reply to "hi", ended by <|im_end|>: without the stop, 24 tokens would run on.
    assert capsys.readouterr().out == "hello there\n"


def test_end_of_turn_ids_come_from_the_template(chat_checkpoint):
    _, tokenizer, _ = load_pretrained(chat_checkpoint)
    vocab = tokenizer._hf.get_vocab()
    assert tokenizer.end_of_turn_ids() == (vocab["<|im_end|>"], vocab["<|endoftext|>"])


@pytest.mark.slow  # a subprocess CLI run: the quick loop keeps one of this kind
def test_generate_chat_without_a_template_is_one_error_line(tmp_path):
    from conftest import run_module

    folder = write_qwen2(tmp_path / "plain", chat_template=None)
    result = run_module("kerasllm.recipes.generate", "--model", folder, "--chat", "--prompt", "hi")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --chat: the tokenizer of {folder} has no chat template (no chat_template key in its "
        "tokenizer_config.json); drop --chat to continue the prompt as plain text, or use a chat checkpoint"
    )


def test_chat_rows_need_a_tokenizer_with_a_chat_template(tmp_path):
    from kerasllm.config import Config
    from kerasllm.training.finetune.sft import read_and_pack

    _, tokenizer, _ = load_pretrained(write_qwen2(tmp_path / "plain", chat_template=None))
    data = write_chat_jsonl(tmp_path / "chat.jsonl", [CONVERSATION])
    with pytest.raises(DataError, match=r"chat\.jsonl: rows hold \"messages\" \(chat\) but the model's tokenizer has "
                                        r"no chat template \(no chat_template key in its tokenizer_config\.json\)"):
        read_and_pack(data, Config(), tokenizer, pack=True)


def test_malformed_chat_rows_name_the_line(tmp_path):
    from kerasllm.data.readers import read_conversations

    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n" + json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(DataError, match=r"chat\.jsonl, line 2: expected \"messages\": a list of"):
        read_conversations(path)
    path.write_text(json.dumps({"messages": CONVERSATION[:2]}) + "\n")
    with pytest.raises(DataError, match=r"chat\.jsonl, line 1: the conversation has no assistant message"):
        read_conversations(path)


def test_export_hf_keeps_the_chat_template(chat_checkpoint, tmp_path):
    from kerasllm.checkpoints.writer import save_hf

    _, tokenizer, model = load_pretrained(chat_checkpoint)
    save_hf(model, tokenizer, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    assert load_pretrained(tmp_path / "out")[1].apply_chat_template(CONVERSATION) == tokenizer.apply_chat_template(CONVERSATION)
