"""Gemma (1) checkpoints: a tiny random keras-hub GemmaBackbone, written as a Hugging Face folder
and as a keras-hub preset, loads into kerasllm's GPT with the same logits and greedy tokens."""

import json

import keras_hub
import numpy as np
import pytest

from kerasllm.checkpoints import load_pretrained
from kerasllm.checkpoints.keras_hub_preset import backbone_hf_config, gemma_tensors
from kerasllm.checkpoints.safetensors_io import write_safetensors
from kerasllm.errors import ConfigError

from test_checkpoints import TEXTS, VOCAB, tokenizer_json  # the same tiny byte-level BPE


def gemma_backbone(num_key_value_heads=1):
    """Gemma 7B's shape in miniature: head_dim apart from hidden / heads (4 x 16 != 32), MQA."""
    model = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=4, num_key_value_heads=num_key_value_heads,
        hidden_dim=32, intermediate_dim=128, head_dim=16,  # keras-hub's intermediate_dim is both halves
    )
    rng = np.random.default_rng(0)
    for weight in model.weights:  # large weights: tanh vs exact GELU, and a missing `1 +`, would show
        scale = 0.2 if "norm" in weight.path else 0.25
        weight.assign(rng.normal(0, scale, weight.shape))
    return model


def write_hf(folder, hub):
    """By hand: keras-hub's Gemma exporter fits only heads * head_dim == hidden."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(backbone_hf_config(hub)))
    write_safetensors(gemma_tensors(hub), folder / "model.safetensors")
    (folder / "tokenizer.json").write_text(tokenizer_json())
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return folder


def hub_logits(hub, token_ids):
    task = keras_hub.models.GemmaCausalLM(backbone=hub, preprocessor=None)
    return np.asarray(task({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)}))


def ids(batch=2, time=24, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, time)).astype("int32")


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_hf_gemma_folder_gives_keras_hubs_logits(kv_heads, tmp_path):
    hub = gemma_backbone(kv_heads)
    config, _, model = load_pretrained(write_hf(tmp_path / "gemma", hub), block_size=64)
    m = config.model
    assert (m.mlp, m.mlp_activation, m.norm, m.scale_embeddings, m.tie_embeddings, m.head_dim) == (
        "swiglu", "gelu_tanh", "rmsnorm", True, True, 16)
    x = ids()
    expected = hub_logits(hub, x)
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-4, rtol=1e-5)
    assert np.abs(expected).max() > 1.0  # weights large enough for activations to matter


@pytest.mark.slow  # two compiled decoding loops
def test_gemma_greedy_generation_matches_keras_hub(tmp_path):
    from kerasllm.generation import Generator

    hub = gemma_backbone()
    _, tokenizer, model = load_pretrained(write_hf(tmp_path / "gemma", hub), block_size=64)
    prompt = ids(batch=1, time=8, seed=3)
    ours = Generator(model, tokenizer).generate(prompt, max_new_tokens=32, temperature=0)
    task = keras_hub.models.GemmaCausalLM(backbone=hub, preprocessor=None)
    task.compile(sampler="greedy")
    padded, mask = np.zeros((1, 40), "int32"), np.zeros((1, 40), bool)
    padded[:, :8], mask[:, :8] = prompt, True
    theirs = task.generate({"token_ids": padded, "padding_mask": mask}, stop_token_ids=None)
    np.testing.assert_array_equal(np.asarray(ours)[0], np.asarray(theirs["token_ids"])[0])


def test_gemma_keras_hub_preset_gives_the_same_logits(tmp_path):
    from kerasllm.tokenizers import SentencePieceTokenizer

    hub = gemma_backbone()
    hub.save_to_preset(str(tmp_path / "preset"))
    proto = SentencePieceTokenizer.train(TEXTS, vocab_size=VOCAB).proto
    keras_hub.tokenizers.SentencePieceTokenizer(proto=proto).save_to_preset(str(tmp_path / "preset"))
    _, tokenizer, model = load_pretrained(tmp_path / "preset", block_size=64)
    x = ids()
    np.testing.assert_allclose(np.asarray(model(x)), hub_logits(hub, x), atol=1e-4, rtol=1e-5)
    assert tokenizer.sp_model == proto


def test_gemma_norms_scale_by_one_plus_their_weight(tmp_path):
    """kerasllm's RMSNorm holds 1 + the checkpoint's weight, and writes the weight back."""
    from kerasllm.checkpoints.hf import hf_tensors

    hub = gemma_backbone()
    _, _, model = load_pretrained(write_hf(tmp_path / "gemma", hub))
    final = hub.get_layer("final_normalization").scale.numpy()
    ours = {v.path.split("/", 1)[1]: v.numpy() for v in model.weights}
    np.testing.assert_array_equal(ours["final_norm/scale"], 1 + final)
    back = hf_tensors(model, "gemma")
    np.testing.assert_allclose(back["model.norm.weight"], final, atol=1e-7)
    np.testing.assert_array_equal(back["model.layers.1.mlp.gate_proj.weight"], gemma_tensors(hub)["model.layers.1.mlp.gate_proj.weight"])


@pytest.mark.parametrize("model_type, missing", [("gemma2", "soft-capping"), ("gemma3", "q/k norms")])
def test_later_gemmas_are_one_clear_error(model_type, missing, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ConfigError, match=rf"model_type = '{model_type}' is not supported \(kerasllm's GPT has no .*{missing}"):
        load_pretrained(tmp_path)


def test_a_gemma2_preset_backbone_is_refused():
    hub = keras_hub.models.GemmaBackbone(vocabulary_size=VOCAB, num_layers=1, num_query_heads=2, num_key_value_heads=1,
                                         hidden_dim=16, intermediate_dim=32, head_dim=8, final_logit_soft_cap=30.0)
    with pytest.raises(ConfigError, match="final_logit_soft_cap = 30.0 \\(Gemma 2\\) is not supported"):
        backbone_hf_config(hub)


def test_a_gemma_model_exports_back_to_hf_and_keras_hub(tmp_path):
    """Imported -> `--format hf` (keras-hub reads it) and `--format keras-hub`: the same logits."""
    from kerasllm.checkpoints.writer import save_hf, save_keras_hub

    hub = gemma_backbone()
    _, tokenizer, model = load_pretrained(write_hf(tmp_path / "gemma", hub), block_size=64)
    save_hf(model, tokenizer, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["head_dim"], config["hidden_activation"]) == ("gemma", 16, "gelu_pytorch_tanh")
    x = ids()
    expected = hub_logits(hub, x)
    np.testing.assert_allclose(hub_logits(keras_hub.models.Backbone.from_preset(str(tmp_path / "hf")), x), expected,
                               atol=1e-4, rtol=1e-5)
    save_keras_hub(model, tokenizer, tmp_path / "preset")
    np.testing.assert_allclose(hub_logits(keras_hub.models.Backbone.from_preset(str(tmp_path / "preset")), x),
                               expected, atol=1e-4, rtol=1e-5)


def test_scaled_embeddings_do_not_export_as_llama(tmp_path):
    from kerasllm.checkpoints.writer import hf_target
    from kerasllm.models import GPT

    model = GPT(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, positions="rope", norm="rmsnorm",
                mlp="swiglu", bias=False, scale_embeddings=True)  # a silu gate: no format has it with the scale
    with pytest.raises(ConfigError, match="model.mlp_activation = 'auto': gemma's gate uses gelu_tanh"):
        hf_target(model)
