"""Memory per device of training and inference: states, activations and KV cache.

Static state per parameter, as Keras keeps it: under a `mixed_*` policy the variables (and so
the gradients and optimizer slots) stay float32 and only the computation runs in 16 bits, so
float32 and mixed precision both need 4 + 4 + 4 * slots bytes per parameter (16 with Adam, the
same as ZeRO's 2 + 2 + 12 accounting); mixed precision halves the activations. A pure
`bfloat16` policy stores everything in 2 bytes.

Activations are counted tensor by tensor from `kerasllm.layers.DecoderBlock` (what the backward
pass keeps), per token and layer, in elements of the compute dtype:

    norm inputs and outputs     4 d          (x, norm_1(x), x + attn, norm_2(...))
    fused qkv output            (H + 2 K) hd
    rotated q and k (RoPE)      (H + K) hd
    attention output            H hd         (input of the output projection)
    scores + probabilities      2 H T        (materialized attention; flash: H, the logsumexp)
    MLP                         2 w (GELU: fc output and GELU output) or 4 w (SwiGLU: gate, up,
                                silu(gate), product)

plus one byte per element of each dropout mask when dropout > 0, and the float32 logits and
their softmax (2 V x 4 bytes per token). With rematerialization (one checkpoint per block) only
each block's input `d` is kept and one block is recomputed at a time. Tensor parallelism splits
everything inside attention and the MLP (and the vocabulary) by the tensor-parallel size; the
residual-stream tensors stay replicated (no sequence parallelism).
"""

import dataclasses

from kerasllm.errors import ConfigError
from kerasllm.plan.params import count_params, head_dims, resolve_vocab

# precision -> (bytes per stored variable element, bytes per activation element)
PRECISIONS = {
    "float32": (4, 4),
    "mixed_bfloat16": (4, 2),
    "mixed_float16": (4, 2),
    "bfloat16": (2, 2),
}
OPTIMIZER_SLOTS = {"adamw": 2, "adam": 2, "momentum": 1, "sgd": 0}


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def check_optimizer(optimizer):
    if optimizer not in OPTIMIZER_SLOTS:
        raise ConfigError(f"optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZER_SLOTS)}")
    return OPTIMIZER_SLOTS[optimizer]


def activation_bytes_per_token(model_config, seq_len=None, precision="float32", remat=False,
                               tensor_parallel=1, flash_attention=False, vocab_size=None):
    """Activation bytes one token keeps for the backward pass, over the whole model.

    Args:
        model_config: a `kerasllm.config.ModelConfig`.
        seq_len: training sequence length `T`; `None` means `block_size`.
        precision: a key of `PRECISIONS`.
        remat: rematerialize each block (keep only block inputs).
        tensor_parallel: tensor-parallel degree (splits attention, MLP and the vocabulary).
        flash_attention: a fused attention kernel that does not store the `T x T` scores.
        vocab_size: overrides `model_config.vocab_size`.

    Returns:
        `{"per_layer": bytes of one block, "layers": all blocks, "head": logits and loss,
        "total": ...}`, per token.
    """
    c = model_config
    _, act = check_precision(precision)
    t = c.block_size if seq_len is None else seq_len
    vocab = resolve_vocab(c, vocab_size)
    tp = tensor_parallel
    d = c.n_embd
    if c.arch == "lstm":
        hidden = c.hidden_size or d
        # Input, 4 gate pre-activations, cell state, tanh(cell) and output per step.
        layer = act * (d + 7 * hidden)
        mask = 2 * hidden if c.dropout else 0
        per_layer = layer + mask
    else:
        n_head, n_kv, hd, hidden = head_dims(c)
        replicated = 4 * d
        split = (n_head + 2 * n_kv) * hd + n_head * hd
        if c.positions == "rope":
            split += (n_head + n_kv) * hd
        if c.qk_norm:  # the normalized queries and keys
            split += (n_head + n_kv) * hd
        split += n_head if flash_attention else 2 * n_head * t
        split += 4 * hidden if c.mlp == "swiglu" else 2 * hidden
        mask = 2 * d if c.dropout else 0  # one byte per element: attention and MLP outputs
        per_layer = act * (replicated + split / tp) + mask
    stored = c.n_layer * act * d + per_layer if remat else c.n_layer * per_layer
    head = 2 * act * d + 2 * 4 * vocab / tp  # final norm in/out, float32 logits and softmax
    return {"per_layer": per_layer, "layers": stored, "head": head, "total": stored + head}


@dataclasses.dataclass
class MemoryEstimate:
    """Bytes per device of one training setup."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    buffers: float  # FSDP: gathered weights and unsharded gradients of ~2 blocks in flight

    @property
    def states(self):
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self):
        return self.states + self.activations + self.buffers

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["total"] = self.total
        return out


def training_memory(model_config, micro_batch, seq_len=None, precision="float32", optimizer="adamw",
                    data_parallel=1, tensor_parallel=1, fsdp=False, remat=False,
                    flash_attention=False, vocab_size=None):
    """Memory per device of a training step.

    Args:
        model_config: a `kerasllm.config.ModelConfig`.
        micro_batch: sequences per device per forward/backward pass.
        seq_len: sequence length; `None` means `block_size`.
        precision: "float32", "mixed_bfloat16", "mixed_float16" or "bfloat16".
        optimizer: "adamw", "adam", "momentum" (SGD with momentum) or "sgd".
        data_parallel: size of the batch axis of the device mesh.
        tensor_parallel: size of the model axis (weights split Megatron-style).
        fsdp: also shard weights, gradients and optimizer state over the batch axis (ZeRO-3).
        remat: rematerialize each block in the backward pass.
        flash_attention: the attention kernel does not store `T x T` scores.
        vocab_size: overrides `model_config.vocab_size`.

    Returns:
        A `MemoryEstimate`.

    Examples:

    >>> from kerasllm.models.presets import get_preset
    >>> m = training_memory(get_preset("llama-7b"), 1, precision="mixed_bfloat16",
    ...                     data_parallel=8, fsdp=True, remat=True)
    >>> round(m.states / 1e9, 1)  # 16 bytes x 6.74e9 parameters / 8 devices
    13.5
    """
    var_bytes, act = check_precision(precision)
    slots = check_optimizer(optimizer)
    counts = count_params(model_config, vocab_size)
    shards = tensor_parallel * (data_parallel if fsdp else 1)
    n = counts["total"] / shards
    buffers = 0.0
    if fsdp and data_parallel > 1:
        buffers = 2 * 2 * counts["per_layer"] / tensor_parallel * act  # 2 blocks: weights + grads
    t = model_config.block_size if seq_len is None else seq_len
    per_token = activation_bytes_per_token(
        model_config, t, precision, remat, tensor_parallel, flash_attention, vocab_size
    )["total"]
    return MemoryEstimate(
        weights=n * var_bytes, gradients=n * var_bytes, optimizer=n * var_bytes * slots,
        activations=micro_batch * t * per_token, buffers=buffers,
    )


def kv_cache_bytes(model_config, batch, context=None, precision="bfloat16"):
    """Bytes of the key/value cache for `batch` sequences of `context` tokens.

    `batch x n_layer x 2 x context x n_kv_head x head_dim` elements in the compute dtype, as
    `GPT.init_cache` allocates it (grouped-query attention shrinks it by `n_head / n_kv_head`).
    An LSTM keeps `2 x hidden` per layer and sequence instead.
    """
    c = model_config
    _, act = check_precision(precision)
    if c.arch == "lstm":
        return batch * c.n_layer * 2 * (c.hidden_size or c.n_embd) * act
    context = c.block_size if context is None else context
    _, n_kv, hd, _ = head_dims(c)
    return batch * c.n_layer * 2 * context * n_kv * hd * act


def inference_memory(model_config, batch, context=None, precision="bfloat16", tensor_parallel=1, vocab_size=None):
    """Weights plus KV cache per device for cached generation.

    Keras keeps the variables of a `mixed_*` policy in float32, so only a `bfloat16` policy
    stores weights in 2 bytes; the cache is in the compute dtype either way.
    """
    var_bytes, _ = check_precision(precision)
    weights = count_params(model_config, vocab_size)["total"] * var_bytes / tensor_parallel
    cache = kv_cache_bytes(model_config, batch, context, precision) / tensor_parallel
    return {"weights": weights, "kv_cache": cache, "total": weights + cache}
