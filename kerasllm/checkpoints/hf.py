"""Hugging Face checkpoints <-> kerasllm's `GPT`: `config.json` fields and tensor names.

One table (`weight_slots`) says, for every variable of a `GPT`, which tensors of the
Hugging Face checkpoint hold it and how they convert each way, so import and export cannot
drift apart. Two layouts cover the supported `model_type`s:

- `gpt2`: learned positions, LayerNorm, GELU MLP; `c_attn`/`c_fc`/`c_proj` are Conv1D weights,
  already `(in, out)` like a Keras Dense kernel.
- `llama`, `mistral`, `qwen2`, `qwen3`: RoPE, RMSNorm, SwiGLU; `*_proj.weight` are `(out, in)`
  and kerasllm fuses q/k/v (and gate/up) into one kernel. Both rotate halves for RoPE, so
  q and k need no permutation.
"""

import json
from pathlib import Path

import numpy as np

from kerasllm.config import ModelConfig
from kerasllm.errors import ConfigError, DataError

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
LLAMA_LAYOUT = ("llama", "mistral", "qwen2", "qwen3")
# Buffers some exports keep next to the weights: masks and RoPE tables, not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                     "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}


def read_config(directory):
    """`config.json` of a checkpoint folder as a dict."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; a Hugging Face checkpoint folder needs config.json with model_type")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON: {error}") from None


def model_config_from_hf(hf, source="config.json", block_size=None):
    """The `ModelConfig` of a Hugging Face `config.json`.

    Args:
        hf: the parsed `config.json`.
        source: named in errors.
        block_size: context to run with; `None` takes the checkpoint's own. Longer than the
            checkpoint's is an error; shorter crops it (learned position tables are sliced).

    Returns:
        A `ModelConfig` with `arch = "gpt"`.

    Raises:
        ConfigError: an unsupported `model_type` or option, or a context the checkpoint lacks.

    Examples:

    >>> config = model_config_from_hf({"model_type": "gpt2", "vocab_size": 100, "n_positions": 64,
    ...                                "n_embd": 32, "n_layer": 2, "n_head": 4})
    >>> config.mlp_activation, config.block_size
    ('gelu_tanh', 64)
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{source}: model_type = {model_type!r} is not supported; kerasllm imports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    values = _gpt2_fields(hf, source) if model_type == "gpt2" else _llama_fields(hf, model_type, source)
    context = values.pop("context")
    if block_size and block_size > context:
        raise ConfigError(
            f"{source}: the checkpoint's context is {context} tokens; model.block_size = {block_size} is "
            f"longer (use at most {context})"
        )
    values["block_size"] = block_size or context
    window = values.pop("sliding_window", None)
    if window and window < values["block_size"]:
        raise ConfigError(
            f"{source}: sliding_window = {window} is shorter than the context {values['block_size']}; kerasllm "
            f"has no sliding-window attention: set model.block_size <= {window}"
        )
    return ModelConfig(arch="gpt", dropout=0.0, **values)


def _need(hf, key, source):
    if key not in hf:
        raise ConfigError(f"{source}: missing key {key!r}")
    return hf[key]


def _gpt2_fields(hf, source):
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _GPT2_ACTIVATIONS:
        raise ConfigError(f"{source}: activation_function = {activation!r}; expected one of {', '.join(_GPT2_ACTIVATIONS)}")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(key):
            raise ConfigError(f"{source}: {key} = true is not supported")
    if hf.get("scale_attn_weights") is False:
        raise ConfigError(f"{source}: scale_attn_weights = false is not supported")
    n_embd = _need(hf, "n_embd", source)
    return dict(
        vocab_size=_need(hf, "vocab_size", source), context=_need(hf, "n_positions", source),
        n_layer=_need(hf, "n_layer", source), n_head=_need(hf, "n_head", source), n_embd=n_embd,
        mlp_hidden=hf.get("n_inner") or 4 * n_embd, positions="learned", norm="layernorm", mlp="gelu",
        mlp_activation=_GPT2_ACTIVATIONS[activation], norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _rope_fields(hf, source):
    """rope_theta and rope_scaling, from the flat fields or `rope_parameters` (newer transformers)."""
    parameters = hf.get("rope_parameters") or {}
    theta = parameters.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (parameters if parameters.get("rope_type", "default") != "default" else None)
    values = dict(rope_theta=float(theta))
    if not scaling:
        return values
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return values
    if kind == "linear":
        return dict(values, rope_scaling="linear", rope_factor=float(scaling["factor"]))
    if kind == "llama3":
        return dict(
            values, rope_scaling="llama3", rope_factor=float(scaling["factor"]),
            rope_low_freq_factor=float(scaling["low_freq_factor"]),
            rope_high_freq_factor=float(scaling["high_freq_factor"]),
            rope_original_context=int(scaling["original_max_position_embeddings"]),
        )
    raise ConfigError(f"{source}: rope_scaling type {kind!r} is not supported; expected linear or llama3")


def _llama_fields(hf, model_type, source):
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"{source}: hidden_act = {hf['hidden_act']!r}; expected silu")
    for key in ("mlp_bias",) + (("attention_bias",) if model_type != "qwen2" else ()):
        if hf.get(key):
            raise ConfigError(f"{source}: {key} = true is not supported for model_type {model_type!r}")
    n_embd, n_head = _need(hf, "hidden_size", source), _need(hf, "num_attention_heads", source)
    head_dim = hf.get("head_dim") or (128 if model_type == "qwen3" else n_embd // n_head)
    if model_type == "mistral":
        window = hf.get("sliding_window")
    elif model_type in ("qwen2", "qwen3"):
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    else:
        window = None
    default_context = {"llama": 2048, "mistral": 32768, "qwen2": 32768, "qwen3": 32768}[model_type]
    return dict(
        vocab_size=_need(hf, "vocab_size", source), context=hf.get("max_position_embeddings", default_context),
        n_layer=_need(hf, "num_hidden_layers", source), n_head=n_head, n_embd=n_embd,
        n_kv_head=hf.get("num_key_value_heads") or n_head, mlp_hidden=_need(hf, "intermediate_size", source),
        head_dim=head_dim if head_dim * n_head != n_embd else 0, positions="rope", norm="rmsnorm",
        mlp="swiglu", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), bias=False,
        qkv_bias=model_type == "qwen2", qk_norm=model_type == "qwen3",
        tie_embeddings=hf.get("tie_word_embeddings", False), sliding_window=window, **_rope_fields(hf, source),
    )


# --- the tensor table ---------------------------------------------------------------------
class Slot:
    """One variable of the model and the checkpoint tensors that hold it.

    Attributes:
        path: the variable's path inside the model (e.g. "block_0/attn/qkv/kernel").
        keys: checkpoint keys (without "model."/"transformer." prefix).
        to_keras: list of checkpoint arrays -> the variable's value.
        to_hf: the variable's value -> list of checkpoint arrays.
    """

    def __init__(self, path, keys, to_keras=None, to_hf=None):
        self.path, self.keys = path, list(keys)
        self.to_keras = to_keras or (lambda arrays: arrays[0])
        self.to_hf = to_hf or (lambda value: [value])


def _transposed(path, key):
    return Slot(path, [key], lambda a: a[0].T, lambda v: [v.T])


def _fused(path, keys, sizes, axis_in_hf=0, transpose=True):
    """Several (out, in) matrices (or vectors) concatenated into one Keras kernel (or bias)."""
    def to_keras(arrays):
        joined = np.concatenate(arrays, axis=axis_in_hf)
        return joined.T if transpose else joined

    def to_hf(value):
        value = value.T if transpose else value
        return np.split(value, np.cumsum(sizes)[:-1], axis=axis_in_hf)

    return Slot(path, keys, to_keras, to_hf)


def weight_slots(model, layout):
    """The `Slot`s of every variable of `model` (a `GPT`) in a `gpt2` or `llama` layout."""
    if layout == "gpt2":
        return _gpt2_slots(model)
    return _llama_slots(model)


def _gpt2_slots(model):
    slots = [Slot("token_embedding/embeddings", ["wte.weight"]),
             Slot("position_embedding/embeddings", ["wpe.weight"])]
    for i in range(model.n_layer):
        p, b = f"h.{i}.", f"block_{i}/"
        for ours, theirs in (("norm_1", "ln_1"), ("norm_2", "ln_2")):
            slots += [Slot(f"{b}{ours}/gamma", [f"{p}{theirs}.weight"]), Slot(f"{b}{ours}/beta", [f"{p}{theirs}.bias"])]
        for ours, theirs in (("attn/qkv", "attn.c_attn"), ("attn/proj", "attn.c_proj"),
                             ("mlp/fc", "mlp.c_fc"), ("mlp/proj", "mlp.c_proj")):
            slots += [Slot(f"{b}{ours}/kernel", [f"{p}{theirs}.weight"]), Slot(f"{b}{ours}/bias", [f"{p}{theirs}.bias"])]
    slots += [Slot("final_norm/gamma", ["ln_f.weight"]), Slot("final_norm/beta", ["ln_f.bias"])]
    if not model.tie_embeddings:
        slots.append(_transposed("token_embedding/reverse_embeddings", "lm_head.weight"))
    return slots


def _llama_slots(model):
    H, K, D, F = model.n_head, model.n_kv_head, model.head_dim, model.mlp_hidden
    slots = [Slot("token_embedding/embeddings", ["embed_tokens.weight"])]
    for i in range(model.n_layer):
        p, b = f"layers.{i}.", f"block_{i}/"
        qkv = [f"{p}self_attn.{n}_proj" for n in "qkv"]
        slots += [
            Slot(f"{b}norm_1/scale", [f"{p}input_layernorm.weight"]),
            _fused(f"{b}attn/qkv/kernel", [k + ".weight" for k in qkv], (H * D, K * D, K * D)),
            _fused(f"{b}attn/qkv/bias", [k + ".bias" for k in qkv], (H * D, K * D, K * D), transpose=False),
            _transposed(f"{b}attn/proj/kernel", f"{p}self_attn.o_proj.weight"),
            Slot(f"{b}attn/q_norm/scale", [f"{p}self_attn.q_norm.weight"]),
            Slot(f"{b}attn/k_norm/scale", [f"{p}self_attn.k_norm.weight"]),
            Slot(f"{b}norm_2/scale", [f"{p}post_attention_layernorm.weight"]),
            _fused(f"{b}mlp/fc/kernel", [f"{p}mlp.gate_proj.weight", f"{p}mlp.up_proj.weight"], (F, F)),
            _transposed(f"{b}mlp/proj/kernel", f"{p}mlp.down_proj.weight"),
        ]
    slots.append(Slot("final_norm/scale", ["norm.weight"]))
    if not model.tie_embeddings:
        slots.append(_transposed("token_embedding/reverse_embeddings", "lm_head.weight"))
    return slots


def model_variables(model):
    """`{path inside the model: variable}` for a `GPT` (the path without the model's own name)."""
    return {v.path.split("/", 1)[1]: v for v in model.weights}


def load_weights(model, layout, checkpoint):
    """Assigns every variable of `model` from `checkpoint` (a `SafetensorsCheckpoint`).

    Raises:
        DataError: a missing or unexpected tensor, or one of the wrong shape, naming the file
            and the key.
    """
    variables = model_variables(model)
    used = set()
    for slot in weight_slots(model, layout):
        variable = variables.pop(slot.path, None)
        if variable is None:
            continue  # an optional slot this model has not (biases, q/k norms)
        for key in slot.keys:
            if key not in checkpoint:
                raise DataError(f"{checkpoint.directory}: tensor {key} is missing (needed for {slot.path})")
        arrays = [checkpoint.get(key) for key in slot.keys]
        used.update(slot.keys)
        if slot.path == "position_embedding/embeddings" and arrays[0].shape[0] > variable.shape[0]:
            arrays[0] = arrays[0][: variable.shape[0]]  # a shorter context: crop the table
        value = _checked(slot, arrays, variable, checkpoint)
        del arrays
        variable.assign(value.astype(variable.dtype, copy=False))
        del value  # one tensor at a time: peak memory stays near the model's own size
    if variables:
        raise DataError(f"{checkpoint.directory}: no tensor maps to {', '.join(variables)}")
    if model.tie_embeddings:
        used.add("lm_head.weight")  # tied checkpoints sometimes store the head anyway
    unexpected = [k for k in checkpoint.keys() if k not in used and not k.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise DataError(
            f"{checkpoint.file_of(unexpected[0])}: unexpected tensor {unexpected[0]} "
            f"({len(unexpected)} unused in all); config.json does not describe this checkpoint"
        )


def _checked(slot, arrays, variable, checkpoint):
    try:
        value = slot.to_keras(arrays)
    except ValueError:
        value = None
    if value is None or tuple(value.shape) != tuple(variable.shape):
        shapes = ", ".join(f"{k} {tuple(a.shape)}" for k, a in zip(slot.keys, arrays))
        raise DataError(
            f"{checkpoint.file_of(slot.keys[0])}: tensor shapes {shapes} do not fit {slot.path} "
            f"{tuple(variable.shape)} of the model config.json describes"
        )
    return value


def hf_tensors(model, layout):
    """`{hf key: numpy array}` of a `GPT` in a layout, with zero biases where it has none."""
    if not model.built:
        model.build((None, model.block_size))
    variables = model_variables(model)
    prefix = "" if layout == "gpt2" else "model."
    tensors = {}
    for slot in weight_slots(model, layout):
        variable = variables.pop(slot.path, None)
        if variable is None:
            if slot.path.endswith(("/beta", "/bias")) and layout == "gpt2":
                width = _gpt2_bias_width(model, slot.path)
                tensors[prefix + slot.keys[0]] = np.zeros(width, np.float32)
            continue
        for key, array in zip(slot.keys, slot.to_hf(np.asarray(variable.numpy(), np.float32))):
            tensors[key if key == "lm_head.weight" else prefix + key] = np.ascontiguousarray(array)
    if variables:  # e.g. LoRA adapters: merge them first
        raise ConfigError(f"model variables {', '.join(sorted(variables))} have no place in a {layout} checkpoint")
    return tensors


def _gpt2_bias_width(model, path):
    sizes = {"attn/qkv": 3 * model.n_embd, "mlp/fc": model.mlp_hidden}
    return next((size for part, size in sizes.items() if part in path), model.n_embd)
