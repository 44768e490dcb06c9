"""Pretrained checkpoints: tiny random keras-hub models, written as Hugging Face folders and
keras-hub presets, load into kerasllm's GPT with the same logits and greedy generations."""

import json

import keras
import keras_hub
import numpy as np
import pytest

from kerasllm.checkpoints import is_pretrained_source, load_pretrained
from kerasllm.checkpoints.keras_hub_preset import backbone_hf_config, qwen3_tensors
from kerasllm.checkpoints.safetensors_io import SafetensorsCheckpoint, write_safetensors
from kerasllm.errors import ConfigError, DataError

VOCAB = 320
TEXTS = ["The quick brown fox jumps over the lazy dog.\n", "今天天气很好，我们去公园散步。\n",
         "emoji 🙂🚀 and numbers 12345\n", "hello world, hello kerasllm\n"] * 20


def tokenizer_json(size=VOCAB):
    """A tiny GPT-2 style byte-level BPE (HF tokenizers), `<|endoftext|>` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(TEXTS, trainer)
    return hf.to_str()


def backbone(kind):
    common = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=32, intermediate_dim=64)
    gqa = dict(common, num_query_heads=4, num_key_value_heads=2)
    if kind == "gpt2":
        model = keras_hub.models.GPT2Backbone(**dict(common, intermediate_dim=128), num_heads=4, max_sequence_length=64)
    elif kind == "llama3":
        model = keras_hub.models.Llama3Backbone(
            **gqa, rope_max_wavelength=500000.0, rope_frequency_adjustment_factor=8.0, rope_low_freq_factor=1.0,
            rope_high_freq_factor=4.0, rope_pretraining_sequence_length=16, layer_norm_epsilon=1e-6,
            tie_word_embeddings=False,
        )
    elif kind == "mistral":
        model = keras_hub.models.MistralBackbone(**dict(gqa, num_key_value_heads=1), sliding_window=512,
                                                 layer_norm_epsilon=1e-5)
    elif kind == "qwen2":
        model = keras_hub.models.QwenBackbone(**gqa, tie_word_embeddings=True, layer_norm_epsilon=1e-6)
    elif kind == "qwen2_untied":
        model = keras_hub.models.QwenBackbone(**gqa, tie_word_embeddings=False, layer_norm_epsilon=1e-6)
    else:
        model = keras_hub.models.Qwen3Backbone(**gqa, head_dim=12, layer_norm_epsilon=1e-6,
                                               tie_word_embeddings=False)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # large weights: activation differences (tanh GELU) show
        if "norm" in weight.path or "gamma" in weight.path or "scale" in weight.path:
            weight.assign(1 + rng.normal(0, 0.2, weight.shape))
        else:
            weight.assign(rng.normal(0, 0.25, weight.shape))
    return model


CAUSAL_LM = {"gpt2": keras_hub.models.GPT2CausalLM, "llama3": keras_hub.models.Llama3CausalLM,
             "mistral": keras_hub.models.MistralCausalLM, "qwen2": keras_hub.models.QwenCausalLM,
             "qwen2_untied": keras_hub.models.QwenCausalLM, "qwen3": keras_hub.models.Qwen3CausalLM}


def write_hf(kind, folder):
    """keras-hub's own `export_to_transformers` where it has one; Qwen3 by hand."""
    model = backbone(kind)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "qwen3":
        (folder / "config.json").write_text(json.dumps(backbone_hf_config(model)))
        write_safetensors(qwen3_tensors(model), folder / "model.safetensors")
    else:
        CAUSAL_LM[kind](backbone=model, preprocessor=None).export_to_transformers(str(folder))
        if kind.startswith("qwen2"):  # keras-hub's Qwen export omits use_sliding_window
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps(dict(config, use_sliding_window=False)))
    (folder / "tokenizer.json").write_text(tokenizer_json())
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return model


def ids(batch=2, time=24, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, time)).astype("int32")


def hub_logits(model, token_ids):
    task = CAUSAL_LM[type_of(model)](backbone=model, preprocessor=None)
    return np.asarray(task({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)}))


def type_of(model):
    return {"GPT2Backbone": "gpt2", "Llama3Backbone": "llama3", "MistralBackbone": "mistral",
            "QwenBackbone": "qwen2", "Qwen3Backbone": "qwen3"}[type(model).__name__]


KINDS = ["gpt2", "llama3", "mistral", "qwen2", "qwen2_untied", "qwen3"]


@pytest.mark.parametrize("kind", KINDS)
def test_hf_folder_gives_keras_hubs_logits(kind, tmp_path):
    hub = write_hf(kind, tmp_path / kind)
    config, tokenizer, model = load_pretrained(tmp_path / kind, block_size=64)
    x = ids()
    expected = hub_logits(hub, x)
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-4, rtol=1e-5)
    assert np.abs(expected).max() > 1.0  # weights large enough for activations to matter
    assert config.model.block_size == 64 and config.data.tokenizer == "pretrained"


def test_gpt2_import_uses_tanh_gelu_and_exact_gelu_would_show(tmp_path):
    write_hf("gpt2", tmp_path / "gpt2")
    config, _, model = load_pretrained(tmp_path / "gpt2")
    assert config.model.mlp_activation == "gelu_tanh" and config.model.block_size == 64
    from kerasllm.models import build_model

    config.model.mlp_activation = "gelu"
    exact = build_model(config.model)
    for a, b in zip(exact.weights, model.weights):
        a.assign(b)
    x = ids()
    # Several times the 1e-4 parity tolerance: importing with exact GELU would fail the parity test.
    assert np.abs(np.asarray(exact(x)) - np.asarray(model(x))).max() > 5e-4


@pytest.mark.slow  # 13-35 s each: two compiled decoding loops
@pytest.mark.parametrize("kind", ["gpt2", "llama3", "qwen3"])
def test_greedy_generation_matches_keras_hub(kind, tmp_path):
    from kerasllm.generation import Generator

    hub = write_hf(kind, tmp_path / kind)
    _, tokenizer, model = load_pretrained(tmp_path / kind, block_size=64)
    prompt = ids(batch=1, time=8, seed=3)
    ours = Generator(model, tokenizer).generate(prompt, max_new_tokens=32, temperature=0)
    task = CAUSAL_LM[kind](backbone=hub, preprocessor=None)
    task.compile(sampler="greedy")
    padded = np.zeros((1, 40), "int32")
    padded[:, :8] = prompt
    mask = np.zeros((1, 40), bool)
    mask[:, :8] = True
    theirs = task.generate({"token_ids": padded, "padding_mask": mask}, stop_token_ids=None)
    np.testing.assert_array_equal(np.asarray(ours)[0], np.asarray(theirs["token_ids"])[0])


@pytest.mark.parametrize("kind", ["gpt2", "qwen3"])
def test_keras_hub_preset_gives_the_same_logits(kind, tmp_path):
    import keras_hub

    hub = backbone(kind)
    hub.save_to_preset(str(tmp_path / "preset"))
    spec = json.loads(tokenizer_json(VOCAB - 2))  # room for Qwen's two chat tokens
    vocab, merges = spec["model"]["vocab"], [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    tokenizer_cls = {"gpt2": keras_hub.tokenizers.GPT2Tokenizer, "qwen3": keras_hub.models.Qwen3Tokenizer}[kind]
    if kind == "qwen3":
        vocab = dict(vocab, **{"<|im_end|>": len(vocab), "<|im_start|>": len(vocab) + 1})
    hub_tokenizer = tokenizer_cls(vocabulary=vocab, merges=merges)
    hub_tokenizer.save_to_preset(str(tmp_path / "preset"))
    assert is_pretrained_source(tmp_path / "preset")
    _, tokenizer, model = load_pretrained(tmp_path / "preset", block_size=64)
    x = ids()
    np.testing.assert_allclose(np.asarray(model(x)), hub_logits(hub, x), atol=1e-4, rtol=1e-5)
    assert tokenizer.eos_id == vocab[hub_tokenizer.end_token]  # Qwen3: <|im_end|>, as keras-hub
    text = "hello world 🙂"
    assert tokenizer.encode(text).tolist() == np.asarray(hub_tokenizer(text)).tolist()


@pytest.mark.parametrize("text", ["The quick brown fox.", "今天天气很好", "emoji 🙂🚀 ok", "a<|endoftext|>b\n\nc"])
def test_tokenizer_python_and_graph_encodings_agree(text, tmp_path):
    from tokenizers import Tokenizer

    from kerasllm.tokenizers import load_tokenizer
    from kerasllm.tokenizers.pretrained import PretrainedTokenizer

    source = tokenizer_json()
    tok = PretrainedTokenizer(source, roles={"eos": "<|endoftext|>"})
    reference = Tokenizer.from_str(source).encode(text, add_special_tokens=False).ids
    assert tok.encode(text).tolist() == reference
    assert np.asarray(tok.tf_encode(text)).tolist() == reference
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(text).tolist() == reference


def test_bfloat16_checkpoint_loads(tmp_path):
    hub = write_hf("llama3", tmp_path / "f32")
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    checkpoint = SafetensorsCheckpoint(tmp_path / "f32")
    write_safetensors({k: checkpoint.get(k) for k in checkpoint.keys()}, bf16 / "model.safetensors", "bfloat16")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bf16 / name).write_text((tmp_path / "f32" / name).read_text())
    assert SafetensorsCheckpoint(bf16).dtype("norm.weight") == "BF16"
    _, _, model = load_pretrained(bf16, block_size=64)
    weight = np.asarray(model.get_layer("final_norm").scale)
    np.testing.assert_allclose(weight, checkpoint.get("norm.weight"), rtol=1e-2)
    x = ids()
    assert np.abs(np.asarray(model(x)) - hub_logits(hub, x)).max() < 0.5 * np.abs(hub_logits(hub, x)).max()


# --- bad input: one line naming the file or key -------------------------------------------
def test_folder_in_neither_format(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="neither a Hugging Face checkpoint"):
        load_pretrained(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match=r"config.json: model_type = 'bert' is not supported; kerasllm imports gpt2"):
        load_pretrained(tmp_path)


def test_missing_tokenizer_file(tmp_path):
    write_hf("gpt2", tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(DataError, match="no tokenizer file; expected tokenizer.json"):
        load_pretrained(tmp_path)


def test_truncated_safetensors(tmp_path):
    write_hf("gpt2", tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"model.safetensors: truncated"):
        load_pretrained(tmp_path)


def test_mismatched_shapes(tmp_path):
    write_hf("llama3", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, intermediate_size=48)))
    with pytest.raises(DataError, match=r"model.safetensors: tensor shapes .*gate_proj.weight \(64, 32\).* do not fit block_0/mlp/fc/kernel"):
        load_pretrained(tmp_path)


def test_longer_context_than_the_checkpoint(tmp_path):
    write_hf("gpt2", tmp_path)
    with pytest.raises(ConfigError, match="context is 64 tokens; model.block_size = 128 is longer"):
        load_pretrained(tmp_path, block_size=128)


def test_mistral_sliding_window_shorter_than_the_context(tmp_path):
    write_hf("mistral", tmp_path)
    with pytest.raises(ConfigError, match="sliding_window = 512 is shorter than the context 32768"):
        load_pretrained(tmp_path)


def test_offline_hf_source_says_which_path_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="pass DIR instead"):
        load_pretrained("hf://nobody/not-cached-anywhere")


# --- export back: kerasllm -> Hugging Face folder / keras-hub preset -> same logits ----------
EXPORTS = {
    "gpt2": dict(mlp_activation="gelu_tanh"),
    "llama": dict(positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2,
                  norm_eps=1e-6, rope_theta=500000.0, rope_scaling="llama3", rope_factor=8.0,
                  rope_original_context=16, mlp_hidden=64),
    "qwen2": dict(positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=True, n_kv_head=2,
                  norm_eps=1e-6, mlp_hidden=64),
    "qwen3": dict(positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=True, head_dim=12,
                  n_kv_head=2, norm_eps=1e-6, tie_embeddings=False, mlp_hidden=64),
}


def kerasllm_model(kind, **changes):
    from kerasllm.config import ModelConfig
    from kerasllm.models import build_model
    from kerasllm.tokenizers import BPETokenizer

    tokenizer = BPETokenizer.train(TEXTS, vocab_size=300)
    config = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=64, **dict(EXPORTS[kind], **changes))
    model = build_model(config, vocab_size=tokenizer.vocabulary_size)
    rng = np.random.default_rng(5)
    for weight in model.weights:
        if weight.path.endswith(("gamma", "scale")):
            weight.assign(1 + rng.normal(0, 0.2, weight.shape))
        else:
            weight.assign(rng.normal(0, 0.25, weight.shape))
    return model, tokenizer


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_export_hf_loads_in_keras_hub_with_the_same_logits(kind, tmp_path):
    from kerasllm.checkpoints.writer import save_hf

    model, tokenizer = kerasllm_model(kind)
    save_hf(model, tokenizer, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == kind
    x = ids(time=20) % tokenizer.vocabulary_size
    expected = np.asarray(model(x))
    hub = keras_hub.models.Backbone.from_preset(str(tmp_path / "hf"))
    np.testing.assert_allclose(hub_logits(hub, x), expected, atol=1e-4, rtol=1e-5)
    _, again_tokenizer, again = load_pretrained(tmp_path / "hf")
    np.testing.assert_allclose(np.asarray(again(x)), expected, atol=1e-5)
    for text in ["hello world 🙂", "今天天气很好<eos>"]:
        assert again_tokenizer.encode(text).tolist() == tokenizer.encode(text).tolist()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_export_keras_hub_preset_loads_with_the_same_logits(kind, tmp_path):
    from kerasllm.checkpoints.writer import save_keras_hub

    model, tokenizer = kerasllm_model(kind, norm_eps=1e-5)  # keras-hub's Llama converter alone would use 1e-6
    save_keras_hub(model, tokenizer, tmp_path / "preset")
    x = ids(time=20) % tokenizer.vocabulary_size
    hub = keras_hub.models.Backbone.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(hub_logits(hub, x), np.asarray(model(x)), atol=1e-4, rtol=1e-5)
    hub_tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(str(tmp_path / "preset"))
    assert np.asarray(hub_tokenizer("hello world")).tolist() == tokenizer.encode("hello world").tolist()


def test_export_cli_writes_a_folder_that_imports_back(tmp_path):
    from kerasllm.checkpoints.writer import save_hf
    from kerasllm.recipes.export import main

    model, tokenizer = kerasllm_model("qwen3")
    save_hf(model, tokenizer, tmp_path / "source")
    main(["--model", str(tmp_path / "source"), "--format", "hf", "--output", str(tmp_path / "out")])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "out" / name).is_file()
    x = ids(time=12) % tokenizer.vocabulary_size
    np.testing.assert_allclose(np.asarray(load_pretrained(tmp_path / "out")[2](x)), np.asarray(model(x)), atol=1e-5)


@pytest.mark.parametrize("changes, message", [
    (dict(positions="rope"), "model.positions/norm/mlp = rope/layernorm/gelu: no Hugging Face architecture"),
    (dict(tie_embeddings=False), "model.tie_embeddings = false: gpt2 ties"),
    (dict(n_kv_head=2), "model.n_kv_head = 2: gpt2"),
])
def test_export_of_an_inexpressible_model_names_the_option(changes, message, tmp_path):
    from kerasllm.checkpoints.writer import save_hf

    model, tokenizer = kerasllm_model("gpt2", **changes)
    with pytest.raises(ConfigError, match=message):
        save_hf(model, tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["char", "byte", "wordpiece"])
def test_tokenizer_json_of_each_kind_encodes_the_same(kind):
    from tokenizers import Tokenizer

    from kerasllm.checkpoints.tokenizer_files import hf_tokenizer_json
    from kerasllm.tokenizers import get_tokenizer_class

    tok = get_tokenizer_class(kind).train(TEXTS, vocab_size=200)
    hf = Tokenizer.from_str(hf_tokenizer_json(tok))
    for text in ["The quick brown fox.", "今天天气很好", "emoji 🙂 ok<eos>"]:
        assert hf.encode(text).ids == tok.encode(text).tolist(), text


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_a_merge_free_tokenizer_json_encodes_and_decodes_in_graphs(kind):
    """kerasllm's char and byte models exported as HF checkpoints (a BPE without merges, which
    keras-hub's BytePairTokenizer cannot take) still encode inside graphs, so they export."""
    import tensorflow as tf

    from kerasllm.checkpoints.tokenizer_files import hf_tokenizer_json
    from kerasllm.tokenizers import get_tokenizer_class
    from kerasllm.tokenizers.pretrained import PretrainedTokenizer

    tok = PretrainedTokenizer(hf_tokenizer_json(get_tokenizer_class(kind).train(TEXTS, vocab_size=200)))
    texts = ["The quick brown fox.", "今天天气很好", "emoji 🙂🚀 ok<eos>", "unseen ✓ ж"]
    graph = tok.tf_encode(tf.constant(texts)).to_list()
    assert graph == [tok.encode(text).tolist() for text in texts]
    decoded = [t.decode("utf-8") for t in tok.tf_decode(tf.ragged.constant(graph)).numpy()]
    assert decoded == [tok.decode(ids) for ids in graph]
    assert decoded[1] == "今天天气很好" or kind == "char"  # bytes spell any text back


def test_sentencepiece_tokenizer_model_python_and_graph_agree(tmp_path):
    import sentencepiece

    from kerasllm.tokenizers import SentencePieceTokenizer
    from kerasllm.tokenizers.pretrained import PretrainedTokenizer

    proto = SentencePieceTokenizer.train(TEXTS, vocab_size=400).proto
    (tmp_path / "tokenizer.model").write_bytes(proto)
    tok = PretrainedTokenizer.from_directory(tmp_path)
    reference = sentencepiece.SentencePieceProcessor(model_proto=proto)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (reference.bos_id(), reference.eos_id(), reference.pad_id())
    for text in ["The quick brown fox.", "今天天气很好", "emoji 🙂🚀 ok"]:
        assert tok.encode(text).tolist() == reference.encode(text)
        assert np.asarray(tok.tf_encode(text)).tolist() == reference.encode(text)
        assert tok.decode(tok.encode(text)) == text
    # Llama 2 / Mistral ship a Metaspace tokenizer.json beside tokenizer.model: the latter is used.
    from kerasllm.checkpoints.tokenizer_files import hf_tokenizer_json
    from kerasllm.tokenizers import CharTokenizer

    (tmp_path / "tokenizer.json").write_text(hf_tokenizer_json(CharTokenizer.train(TEXTS)))
    assert PretrainedTokenizer.from_directory(tmp_path).sp_model == proto


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_template_renders_and_splits_assistant_turns(tmp_path):
    from kerasllm.tokenizers import load_tokenizer
    from kerasllm.tokenizers.pretrained import PretrainedTokenizer

    (tmp_path / "tokenizer.json").write_text(tokenizer_json())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "chat_template": CHATML}))
    tok = PretrainedTokenizer.from_directory(tmp_path)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    full = tok.apply_chat_template(messages)
    assert full.endswith("<|im_start|>assistant\n4<|im_end|>\n")
    turns = tok.chat_turns(messages)
    assert [response for _, response in turns] == ["hello<|im_end|>\n", "4<|im_end|>\n"]
    assert "".join(p + r for p, r in turns) == full
    tok.save(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved").apply_chat_template(messages) == full
    with pytest.raises(DataError, match="no chat_template"):
        PretrainedTokenizer(tokenizer_json(), roles={"eos": "<|endoftext|>"}).apply_chat_template(messages)


def test_lora_and_a_classifier_run_on_an_imported_checkpoint(tmp_path):
    from kerasllm.models.classifier import SequenceClassifier
    from kerasllm.models.lora import apply_lora

    write_hf("qwen3", tmp_path / "qwen3")
    _, tokenizer, model = load_pretrained(tmp_path / "qwen3", block_size=32)
    x = ids(time=16)
    before = np.asarray(model(x))
    assert len(apply_lora(model, rank=2)) == 4  # qkv and proj of both blocks
    np.testing.assert_allclose(np.asarray(model(x)), before, atol=1e-6)  # B starts at zero
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x[:, :-1], x[:, 1:], epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    classifier = SequenceClassifier(model, num_classes=2, labels=["neg", "pos"])
    assert tuple(classifier(x).shape) == (2, 2)


def test_sharded_checkpoint_and_a_cropped_context(tmp_path):
    hub = write_hf("gpt2", tmp_path / "one")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    checkpoint = SafetensorsCheckpoint(tmp_path / "one")
    keys = checkpoint.keys()
    weight_map = {}
    for index, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"model-{index + 1:05d}-of-00002.safetensors"
        write_safetensors({k: checkpoint.get(k) for k in part}, sharded / name)
        weight_map.update({k: name for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (sharded / name).write_text((tmp_path / "one" / name).read_text())
    config, _, model = load_pretrained(sharded, block_size=32)  # the checkpoint has 64 positions
    assert tuple(model.position_embedding.position_embeddings.shape) == (32, 32)
    x = ids(time=32)
    np.testing.assert_allclose(np.asarray(model(x)), hub_logits(hub, x), atol=1e-4, rtol=1e-5)


@pytest.mark.slow  # a subprocess CLI run: the quick loop keeps one of this kind
def test_export_cli_error_is_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "config.json").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "kerasllm.recipes.export", "--model", str(tmp_path), "--format", "hf"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}: neither a Hugging Face checkpoint")
    assert "Traceback" not in result.stderr
