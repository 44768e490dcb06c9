"""Hugging Face checkpoints <-> kerasllm's `GPT`: `config.json` fields and tensor names.

One table (`weight_slots`) says, for every variable of a `GPT`, which tensors of the
Hugging Face checkpoint hold it and how they convert each way, so import and export cannot
drift apart. Two layouts cover the supported `model_type`s:

- `gpt2`: learned positions, LayerNorm, GELU MLP; `c_attn`/`c_fc`/`c_proj` are Conv1D weights,
  already `(in, out)` like a Keras Dense kernel.
- `llama`, `mistral`, `qwen2`, `qwen3`: RoPE, RMSNorm, SwiGLU; `*_proj.weight` are `(out, in)`
  and kerasllm fuses q/k/v (and gate/up) into one kernel. Both rotate halves for RoPE, so
  q and k need no permutation.
- `gemma` (Gemma 1): the llama tensors, with a tanh-GELU gate (GeGLU), embeddings scaled by
  sqrt(hidden_size), a tied head and RMSNorms that scale by `1 + weight`: kerasllm's RMSNorm
  scales by its weight, so the checkpoint's norm weights are shifted by one on the way in
  (and back on the way out).
"""

import json
from pathlib import Path

import keras
import numpy as np

from kerasllm import _keras_compat as compat
from kerasllm.config import ModelConfig
from kerasllm.errors import ConfigError, DataError

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma")
LLAMA_LAYOUT = ("llama", "mistral", "qwen2", "qwen3")
# Related model_types whose architecture kerasllm does not have: named in their error.
_NOT_YET = {"gemma2": "attention and final-logit soft-capping, sliding-window layers and post-norms",
            "gemma3": "q/k norms, local/global RoPE bases, sliding-window layers and post-norms"}
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
        missing = f" (kerasllm's GPT has no {_NOT_YET[model_type]})" if model_type in _NOT_YET else ""
        raise ConfigError(
            f"{source}: model_type = {model_type!r} is not supported{missing}; kerasllm imports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if model_type == "gpt2":
        values = _gpt2_fields(hf, source)
    elif model_type == "gemma":
        values = _gemma_fields(hf, source)
    else:
        values = _llama_fields(hf, model_type, source)
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


_GEMMA_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                      "gelu": "gelu"}


def _gemma_fields(hf, source):
    # Gemma's first config.json files say hidden_act = "gelu" for a model trained with the tanh
    # approximation; transformers (and keras-hub) read a missing hidden_activation as tanh GELU.
    activation = hf.get("hidden_activation") or "gelu_pytorch_tanh"
    if activation not in _GEMMA_ACTIVATIONS:
        raise ConfigError(f"{source}: hidden_activation = {activation!r}; expected one of {', '.join(_GEMMA_ACTIVATIONS)}")
    if hf.get("attention_bias"):
        raise ConfigError(f"{source}: attention_bias = true is not supported for model_type 'gemma'")
    n_embd, n_head = _need(hf, "hidden_size", source), _need(hf, "num_attention_heads", source)
    head_dim = hf.get("head_dim") or 256
    return dict(
        vocab_size=_need(hf, "vocab_size", source), context=hf.get("max_position_embeddings", 8192),
        n_layer=_need(hf, "num_hidden_layers", source), n_head=n_head, n_embd=n_embd,
        n_kv_head=hf.get("num_key_value_heads") or n_head, mlp_hidden=_need(hf, "intermediate_size", source),
        head_dim=head_dim if head_dim * n_head != n_embd else 0, positions="rope", norm="rmsnorm",
        mlp="swiglu", mlp_activation=_GEMMA_ACTIVATIONS[activation], norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        bias=False, tie_embeddings=hf.get("tie_word_embeddings", True), scale_embeddings=True,
        **_rope_fields(hf, source),
    )


def layout_of(model_type):
    """The tensor layout (`weight_slots`) of a supported `model_type`: gpt2, llama or gemma."""
    return model_type if model_type in ("gpt2", "gemma") else "llama"


# --- the tensor table ---------------------------------------------------------------------
class Slot:
    """One variable of the model and the checkpoint tensors that hold it.

    The variable is the checkpoint tensors concatenated along their first axis (one tensor:
    itself), transposed when `transpose` is set: every conversion the supported layouts need,
    and one a loader can apply block of rows by block of rows.

    Attributes:
        path: the variable's path inside the model (e.g. "block_0/attn/qkv/kernel").
        keys: checkpoint keys (without "model."/"transformer." prefix).
        transpose: the checkpoint stores `(out, in)`, the Keras kernel is `(in, out)`.
        sizes: rows of each key in the fused variable (for splitting it back on export).
        crop: a longer checkpoint table may be cut to the variable's rows (learned positions).
        offset: added to the checkpoint's values on import (Gemma's norms store `scale - 1`).
    """

    def __init__(self, path, keys, transpose=False, sizes=None, crop=False, offset=0.0):
        self.path, self.keys, self.transpose, self.crop = path, list(keys), transpose, crop
        self.sizes, self.offset = sizes, offset

    def to_keras(self, arrays):
        """Checkpoint arrays -> the variable's value."""
        joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        return (joined.T if self.transpose else joined) + np.float32(self.offset)

    def to_hf(self, value):
        """The variable's value -> checkpoint arrays."""
        value = value - np.float32(self.offset) if self.offset else value
        value = value.T if self.transpose else value
        if len(self.keys) == 1:
            return [value]
        return np.split(value, np.cumsum(self.sizes)[:-1], axis=0)


def _transposed(path, key):
    return Slot(path, [key], transpose=True)


def _fused(path, keys, sizes, transpose=True):
    """Several (out, in) matrices (or vectors) concatenated into one Keras kernel (or bias)."""
    return Slot(path, keys, transpose=transpose, sizes=sizes)


def weight_slots(model, layout):
    """The `Slot`s of every variable of `model` (a `GPT`) in a `gpt2`, `llama` or `gemma` layout."""
    if layout == "gpt2":
        return _gpt2_slots(model)
    slots = _llama_slots(model)
    if layout == "gemma":
        for slot in slots:
            if slot.path.endswith("norm_1/scale") or slot.path.endswith("norm_2/scale") or slot.path == "final_norm/scale":
                slot.offset = 1.0
    return slots


def _gpt2_slots(model):
    slots = [Slot("token_embedding/embeddings", ["wte.weight"]),
             Slot("position_embedding/embeddings", ["wpe.weight"], crop=True)]
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


def build_unset_model(model_config):
    """The `GPT` a `ModelConfig` describes, its variables created without values.

    Building normally would draw a random initialization (one whole copy of the weights,
    plus the allocator's leftovers) only for `load_weights` to overwrite it. Inside
    `keras.StatelessScope(initialize_variables=False)` Keras creates each variable's shape and
    dtype and defers its value; `load_weights` then gives every variable its checkpoint value
    as its first and only buffer.
    """
    from kerasllm.models import build_model

    with keras.StatelessScope(initialize_variables=False):
        return build_model(model_config)


def load_weights(model, layout, checkpoint):
    """Sets every variable of `model` from `checkpoint`, one tensor in memory at a time.

    Each variable's value is filled block of rows by block of rows into one buffer (transposed
    and concatenated on the way, bfloat16 widened) that becomes the variable's own storage, so
    the load holds the model plus one tensor. `model` may come from `build_unset_model`
    (variables without values) or be an ordinary built model (its variables are assigned).
    `checkpoint` is a `SafetensorsCheckpoint` or anything with its `keys`, `shape`, `file_of`,
    `read_rows` and `release`.

    Raises:
        DataError: a missing or unexpected tensor, or one of the wrong shape, naming the file
            and the key.
    """
    variables = model_variables(model)
    used = set()
    try:
        for slot in weight_slots(model, layout):
            variable = variables.pop(slot.path, None)
            if variable is None:
                continue  # an optional slot this model has not (biases, q/k norms)
            for key in slot.keys:
                if key not in checkpoint:
                    raise DataError(f"{checkpoint.directory}: tensor {key} is missing (needed for {slot.path})")
            _set_value(variable, _read_slot(slot, variable, checkpoint))
            used.update(slot.keys)
            for key in slot.keys:
                checkpoint.release(key)
        if variables:
            raise DataError(f"{checkpoint.directory}: no tensor maps to {', '.join(variables)}")
        _initialize_the_rest(model)
    finally:
        compat.forget_deferred(model.variables)
    if model.tie_embeddings:
        used.add("lm_head.weight")  # tied checkpoints sometimes store the head anyway
    unexpected = [k for k in checkpoint.keys() if k not in used and not k.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise DataError(
            f"{checkpoint.file_of(unexpected[0])}: unexpected tensor {unexpected[0]} "
            f"({len(unexpected)} unused in all); config.json does not describe this checkpoint"
        )


# Rows read at a time: small against any real tensor, large enough for fast reads.
BLOCK_BYTES = 16 * 2**20


def _read_slot(slot, variable, checkpoint):
    """The slot's checkpoint tensors, in the variable's layout, as one aligned float32 array."""
    shapes = [tuple(checkpoint.shape(key)) for key in slot.keys]
    rows = [shape[0] if shape else 0 for shape in shapes]
    target = tuple(variable.shape)
    if slot.crop and len(shapes) == 1 and len(target) == 2 and rows[0] > target[0]:
        rows = [target[0]]  # a shorter context: only the first positions are read
    joined = (sum(rows),) + shapes[0][1:]
    expected = joined[::-1] if slot.transpose else joined
    if any(shape[1:] != shapes[0][1:] for shape in shapes) or expected != target:
        listed = ", ".join(f"{k} {s}" for k, s in zip(slot.keys, shapes))
        raise DataError(
            f"{checkpoint.file_of(slot.keys[0])}: tensor shapes {listed} do not fit {slot.path} "
            f"{target} of the model config.json describes"
        )
    out = _aligned_empty(target)
    step = max(1, BLOCK_BYTES // (4 * int(np.prod(shapes[0][1:], dtype=np.int64))))
    done = 0  # rows of the fused variable filled by the keys before this one
    for key, count in zip(slot.keys, rows):
        for start in range(0, count, step):
            stop = min(count, start + step)
            block = checkpoint.read_rows(key, start, stop)  # (rows, in) or (rows,)
            if slot.transpose:
                out[:, done + start: done + stop] = block.T
            else:
                out[done + start: done + stop] = block
            del block
        done += count
    if slot.offset:
        out += np.float32(slot.offset)  # in place: no temporary
    return out


def _aligned_empty(shape, align=64):
    """An uninitialized float32 array whose data starts on an `align`-byte boundary.

    TensorFlow's CPU kernels require aligned buffers (numpy's are only 16-byte aligned): one
    handed over through DLPack unaligned makes the first kernel that reads it abort the process.
    """
    size = int(np.prod(shape, dtype=np.int64)) * 4
    raw = np.empty(size + align, np.uint8)
    skip = (-raw.ctypes.data) % align
    return raw[skip: skip + size].view(np.float32).reshape(shape)


def _set_value(variable, array):
    """Makes `array` (float32, aligned) the variable's value, without another copy where possible."""
    value = array
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Zero-copy: the tensor shares the array's buffer, and a variable created from a tensor
        # nobody else holds adopts that buffer. (`tf.convert_to_tensor` would copy it twice.)
        if array.flags.c_contiguous and array.ctypes.data % 64 == 0:
            value = tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        else:
            value = tf.convert_to_tensor(array)
    del array
    if variable.dtype != "float32":
        value = keras.ops.cast(value, variable.dtype)
    if compat.is_deferred(variable):
        compat.initialize_deferred(variable, value)
    else:
        variable.assign(value)


def _initialize_the_rest(model):
    """Variables no checkpoint tensor holds (e.g. a dropout's seed) get their own initializers."""
    for variable in model.variables:
        if compat.is_deferred(variable):
            compat.initialize_deferred(variable)


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
