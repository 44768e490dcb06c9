"""Writing kerasllm's `GPT` as a Hugging Face checkpoint folder or a keras-hub preset."""

import json
from pathlib import Path

from kerasllm.checkpoints.hf import hf_tensors
from kerasllm.checkpoints.safetensors_io import write_safetensors
from kerasllm.checkpoints.tokenizer_files import gpt2_vocab_files, hf_tokenizer_json, tokenizer_config
from kerasllm.errors import ConfigError

_GPT2_ACTIVATION = {"auto": "gelu", "gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def hf_target(model):
    """`(layout, hf config dict)` of a `GPT`: gpt2, llama, qwen2, qwen3 or gemma.

    Raises:
        ConfigError: an option no target can express, naming the option.
    """
    from kerasllm.models import GPT

    if not isinstance(model, GPT):
        raise ConfigError(f"{type(model).__name__}: only GPT models export to Hugging Face / keras-hub formats")
    m = model
    shape = (m.positions, m.norm, m.mlp)
    if shape == ("learned", "layernorm", "gelu"):
        return "gpt2", _gpt2_config(m)
    if shape == ("rope", "rmsnorm", "swiglu"):
        if m.scale_embeddings:
            return "gemma", _gemma_config(m)
        return "llama", _llama_config(m)
    raise ConfigError(
        f"model.positions/norm/mlp = {'/'.join(shape)}: no Hugging Face architecture has this combination; "
        "export needs learned/layernorm/gelu (gpt2) or rope/rmsnorm/swiglu (llama, qwen2, qwen3)"
    )


def _gpt2_config(m):
    checks = [
        (not m.tie_embeddings, "model.tie_embeddings = false: gpt2 ties the head to the embedding"),
        (m.n_kv_head != m.n_head, f"model.n_kv_head = {m.n_kv_head}: gpt2 has one key/value head per query head"),
        (m.head_dim * m.n_head != m.n_embd, f"model.head_dim = {m.head_dim}: gpt2 needs n_embd // n_head"),
        (m.qk_norm, "model.qk_norm = true: gpt2 has no q/k norm"),
        (m.mlp_activation not in _GPT2_ACTIVATION, f"model.mlp_activation = {m.mlp_activation!r}: not a gpt2 activation"),
        (m.scale_embeddings, "model.scale_embeddings = true: gpt2 does not scale its embeddings"),
    ]
    _raise_first(checks)
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": m.vocab_size,
        "n_positions": m.block_size, "n_ctx": m.block_size, "n_embd": m.n_embd, "n_layer": m.n_layer,
        "n_head": m.n_head, "n_inner": m.mlp_hidden, "activation_function": _GPT2_ACTIVATION[m.mlp_activation],
        "layer_norm_epsilon": m.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "tie_word_embeddings": True, "torch_dtype": "float32",
    }


def _llama_config(m):
    scaling = m.rope_scaling
    checks = [
        (m.bias, "model.bias = true: llama/qwen have no biases on o_proj and the MLP (qkv_bias gives qwen2's)"),
        (m.mlp_activation not in ("auto", "silu"), f"model.mlp_activation = {m.mlp_activation!r}: SwiGLU checkpoints use silu"),
        (m.qk_norm and m.qkv_bias, "model.qk_norm with model.qkv_bias: qwen3 has no q/k/v biases"),
        ((m.qk_norm or m.qkv_bias) and scaling, "model.rope_scaling: only the llama target writes rope_scaling"),
    ]
    _raise_first(checks)
    model_type = "qwen3" if m.qk_norm else "qwen2" if m.qkv_bias else "llama"
    config = {
        "model_type": model_type,
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]],
        "vocab_size": m.vocab_size, "hidden_size": m.n_embd, "intermediate_size": m.mlp_hidden,
        "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head, "num_key_value_heads": m.n_kv_head,
        "head_dim": m.head_dim, "max_position_embeddings": m.block_size, "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta, "hidden_act": "silu", "attention_bias": bool(m.qkv_bias), "mlp_bias": False,
        "attention_dropout": 0.0, "tie_word_embeddings": bool(m.tie_embeddings), "torch_dtype": "float32",
    }
    if model_type != "llama":
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.n_layer)
    if scaling and scaling["type"] == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": scaling["factor"]}
    elif scaling:
        config["rope_scaling"] = {
            "rope_type": "llama3", "factor": scaling["factor"], "low_freq_factor": scaling["low_freq_factor"],
            "high_freq_factor": scaling["high_freq_factor"],
            "original_max_position_embeddings": scaling["original_context"],
        }
    return config


_GEMMA_ACTIVATION = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def _gemma_config(m):
    checks = [
        (m.bias or m.qkv_bias, "model.bias / model.qkv_bias = true: gemma has no biases"),
        (m.mlp_activation not in _GEMMA_ACTIVATION,
         f"model.mlp_activation = {m.mlp_activation!r}: gemma's gate uses gelu_tanh (or gelu)"),
        (not m.tie_embeddings, "model.tie_embeddings = false: gemma ties the head to the embedding"),
        (m.qk_norm, "model.qk_norm = true: gemma has no q/k norm"),
        (m.rope_scaling, "model.rope_scaling: gemma has no rope_scaling"),
    ]
    _raise_first(checks)
    return {
        "model_type": "gemma", "architectures": ["GemmaForCausalLM"], "vocab_size": m.vocab_size,
        "hidden_size": m.n_embd, "intermediate_size": m.mlp_hidden, "num_hidden_layers": m.n_layer,
        "num_attention_heads": m.n_head, "num_key_value_heads": m.n_kv_head, "head_dim": m.head_dim,
        "max_position_embeddings": m.block_size, "rms_norm_eps": m.norm_eps, "rope_theta": m.rope_theta,
        "hidden_act": _GEMMA_ACTIVATION[m.mlp_activation], "hidden_activation": _GEMMA_ACTIVATION[m.mlp_activation],
        "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": True, "torch_dtype": "float32",
    }


def _raise_first(checks):
    for failed, message in checks:
        if failed:
            raise ConfigError(message)


def save_hf(model, tokenizer, directory, dtype="float32"):
    """Writes a Hugging Face checkpoint folder that transformers and keras-hub load.

    Files: `config.json`, `model.safetensors`, `generation_config.json`, `tokenizer.json`
    (`tokenizer.model` for SentencePiece), `tokenizer_config.json`, and `vocab.json` +
    `merges.txt` for byte-level BPE (GPT-2 loaders read those).

    Args:
        model: a `GPT`.
        tokenizer: its kerasllm tokenizer.
        directory: output folder (created).
        dtype: "float32", "float16" or "bfloat16" tensors.

    Returns:
        The folder, as a `Path`.
    """
    layout, config = hf_target(model)
    text = hf_tokenizer_json(tokenizer)  # errors before anything is written
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.update(bos_token_id=int(tokenizer.bos_id), eos_token_id=int(tokenizer.eos_id),
                  pad_token_id=int(tokenizer.pad_id), torch_dtype=dtype)
    _write_json(directory / "config.json", config)
    _write_json(directory / "generation_config.json", {
        "bos_token_id": int(tokenizer.bos_id), "eos_token_id": int(tokenizer.eos_id),
        "pad_token_id": int(tokenizer.pad_id),
    })
    write_safetensors(hf_tensors(model, layout), directory / "model.safetensors", dtype)
    if text is not None:
        (directory / "tokenizer.json").write_text(text, encoding="utf-8")
        files = gpt2_vocab_files(text) if '"ByteLevel"' in text else None
        if files:
            (directory / "vocab.json").write_text(files[0], encoding="utf-8")
            (directory / "merges.txt").write_text(files[1], encoding="utf-8")
    sp_model = getattr(tokenizer, "proto", None) or getattr(tokenizer, "sp_model", None)
    if sp_model:
        (directory / "tokenizer.model").write_bytes(sp_model)
    _write_json(directory / "tokenizer_config.json", tokenizer_config(tokenizer, model.block_size))
    return directory


def save_keras_hub(model, tokenizer, directory):
    """Writes a keras-hub preset: the backbone (loaded by keras-hub from a Hugging Face folder
    kerasllm writes first) and a keras-hub tokenizer of the same vocabulary.

    Returns:
        The folder, as a `Path`.
    """
    import tempfile

    import keras_hub

    from kerasllm.tokenizers.pretrained import PretrainedTokenizer

    layout, _ = hf_target(model)
    m = model
    if layout == "gpt2":
        _raise_first([
            (m.mlp_activation != "gelu_tanh",
             f"model.mlp_activation = {m.mlp_activation!r}: keras-hub's GPT2Backbone always uses the tanh GELU "
             "(gelu_tanh); export --format hf instead"),
            (m.mlp_hidden != 4 * m.n_embd, f"model.mlp_hidden = {m.mlp_hidden}: keras-hub's GPT2Backbone needs 4 * n_embd"),
            (m.norm_eps != 1e-5, f"model.norm_eps = {m.norm_eps}: keras-hub's GPT2Backbone needs 1e-5"),
        ])
    if layout == "gemma":  # keras-hub's Gemma converter reads neither hidden_activation nor rms_norm_eps
        _raise_first([
            (m.mlp_activation != "gelu_tanh",
             f"model.mlp_activation = {m.mlp_activation!r}: keras-hub's GemmaBackbone always uses the tanh GELU"),
            (m.norm_eps != 1e-6, f"model.norm_eps = {m.norm_eps}: keras-hub's GemmaBackbone needs 1e-6"),
        ])
    directory = Path(directory)
    with tempfile.TemporaryDirectory() as scratch:
        save_hf(model, tokenizer, scratch)
        backbone = keras_hub.models.Backbone.from_preset(scratch)
        config = backbone.get_config()
        if layout == "llama" and config.get("layer_norm_epsilon") != model.norm_eps:
            # keras-hub's Llama converter ignores rms_norm_eps (always 1e-6): rebuild with ours.
            rebuilt = type(backbone).from_config(dict(config, layer_norm_epsilon=model.norm_eps))
            rebuilt.set_weights(backbone.get_weights())
            backbone = rebuilt
        backbone.save_to_preset(str(directory))
        hub = PretrainedTokenizer.from_directory(scratch)
        hub_tokenizer = _keras_hub_tokenizer(hub, type(backbone).__name__)
    hub_tokenizer.save_to_preset(str(directory))
    return directory


def _keras_hub_tokenizer(tokenizer, backbone_name):
    import keras_hub

    if tokenizer.sp_model is not None:
        return keras_hub.tokenizers.SentencePieceTokenizer(proto=tokenizer.sp_model)
    if not tokenizer.is_byte_level:
        raise ConfigError(
            f"data.tokenizer = {tokenizer.kind!r}: keras-hub presets hold byte-level BPE or SentencePiece "
            "tokenizers; export --format hf instead"
        )
    spec = json.loads(tokenizer.tokenizer_json)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    vocab = tokenizer._vocab
    if backbone_name == "GPT2Backbone" and "<|endoftext|>" in vocab:
        return keras_hub.tokenizers.GPT2Tokenizer(vocabulary=vocab, merges=merges)
    return keras_hub.tokenizers.BytePairTokenizer(vocabulary=vocab, merges=merges,
                                                  unsplittable_tokens=list(tokenizer.special_tokens))


def _write_json(path, value):
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
