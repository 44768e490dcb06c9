"""Exact weight shapes and parameter counts of a kerasllm model, from its config alone.

`weight_shapes` mirrors `kerasllm.models.GPT` / `LSTMLanguageModel` variable by variable (same
paths, without the model-name prefix, and the same shapes), so counts equal
`model.count_params()` without building anything: a 7B model is planned in microseconds.
Every `[model]` option that changes a shape counts: grouped-query `n_kv_head`, `head_dim`,
`qkv_bias`, `qk_norm`, an untied head, `mlp = "swiglu"` and `mlp_hidden` (imported
checkpoints use them all; tested against `count_params()` of imported GPT-2, Llama, Qwen2 and
Qwen3 models).
"""

import dataclasses

from kerasllm.errors import ConfigError

COMPONENTS = ("embeddings", "attention", "mlp", "norms", "head", "recurrent")


@dataclasses.dataclass(frozen=True)
class Weight:
    """One model variable: its path (without the model prefix), shape and component."""

    path: str
    shape: tuple
    component: str
    layer: int = -1  # decoder block / LSTM layer index; -1 outside the stack

    @property
    def size(self):
        size = 1
        for dim in self.shape:
            size *= dim
        return size


def resolve_vocab(model_config, vocab_size=None):
    vocab = vocab_size or model_config.vocab_size
    if not vocab:
        raise ConfigError("model.vocab_size is 0: give a vocabulary size (a preset, --vocab or a tokenizer)")
    return vocab


def head_dims(model_config):
    """`(n_head, n_kv_head, head_dim, mlp_hidden)` as the GPT model resolves them."""
    from kerasllm.layers.mlp import default_mlp_hidden  # loads Keras: not at `plan --help`

    c = model_config
    n_kv = c.n_kv_head or c.n_head
    head_dim = c.head_dim or c.n_embd // c.n_head  # Qwen3 sets it apart from n_embd / n_head
    return c.n_head, n_kv, head_dim, c.mlp_hidden or default_mlp_hidden(c.n_embd, c.mlp)


def weight_shapes(model_config, vocab_size=None):
    """Every variable the model of `model_config` has, in creation order.

    Args:
        model_config: a `kerasllm.config.ModelConfig` (GPT or LSTM).
        vocab_size: overrides `model_config.vocab_size`.

    Returns:
        A list of `Weight`.

    Examples:

    >>> from kerasllm.config import ModelConfig
    >>> [w.path for w in weight_shapes(ModelConfig(n_layer=1), vocab_size=10)][:2]
    ['token_embedding/embeddings', 'position_embedding/embeddings']
    """
    c = model_config
    vocab = resolve_vocab(c, vocab_size)
    d = c.n_embd
    weights = [Weight("token_embedding/embeddings", (vocab, d), "embeddings")]
    if c.arch == "lstm":
        hidden = c.hidden_size or d
        width = d
        for i in range(c.n_layer):
            prefix = f"lstm_{i}/lstm_cell/"
            weights += [
                Weight(prefix + "kernel", (width, 4 * hidden), "recurrent", i),
                Weight(prefix + "recurrent_kernel", (hidden, 4 * hidden), "recurrent", i),
                Weight(prefix + "bias", (4 * hidden,), "recurrent", i),
            ]
            width = hidden
        if c.tie_embeddings:
            if hidden != d:
                weights += [Weight("projection/kernel", (hidden, d), "head"), Weight("projection/bias", (d,), "head")]
        else:
            weights += [Weight("head/kernel", (hidden, vocab), "head"), Weight("head/bias", (vocab,), "head")]
        return weights
    if c.arch != "gpt":
        raise ConfigError(f"model.arch = {c.arch!r}: expected 'gpt' or 'lstm'")

    n_head, n_kv, head_dim, hidden = head_dims(c)
    if not c.tie_embeddings:
        weights.append(Weight("token_embedding/reverse_embeddings", (d, vocab), "head"))
    if c.positions == "learned":
        weights.append(Weight("position_embedding/embeddings", (c.block_size, d), "embeddings"))

    def norm(prefix, layer=-1):
        if c.norm == "rmsnorm":
            return [Weight(prefix + "/scale", (d,), "norms", layer)]
        out = [Weight(prefix + "/gamma", (d,), "norms", layer)]
        return out + ([Weight(prefix + "/beta", (d,), "norms", layer)] if c.bias else [])

    def dense(prefix, fan_in, fan_out, component, layer, bias=c.bias):
        out = [Weight(prefix + "/kernel", (fan_in, fan_out), component, layer)]
        return out + ([Weight(prefix + "/bias", (fan_out,), component, layer)] if bias else [])

    fc_width = 2 * hidden if c.mlp == "swiglu" else hidden  # SwiGLU's gate and up are one matmul
    for i in range(c.n_layer):
        p = f"block_{i}/"
        weights += norm(p + "norm_1", i)
        # Qwen2's qkv_bias: biases on the QKV projection alone.
        weights += dense(p + "attn/qkv", d, (n_head + 2 * n_kv) * head_dim, "attention", i, c.bias or c.qkv_bias)
        weights += dense(p + "attn/proj", n_head * head_dim, d, "attention", i)
        if c.qk_norm:  # Qwen3: one RMSNorm scale over each head's queries, one over its keys
            weights += [Weight(p + f"attn/{n}_norm/scale", (head_dim,), "norms", i) for n in "qk"]
        weights += norm(p + "norm_2", i)
        weights += dense(p + "mlp/fc", d, fc_width, "mlp", i)
        weights += dense(p + "mlp/proj", hidden, d, "mlp", i)
    weights += norm("final_norm")
    return weights


def count_params(model_config, vocab_size=None):
    """Exact parameter count by component.

    Args:
        model_config: a `kerasllm.config.ModelConfig`.
        vocab_size: overrides `model_config.vocab_size`.

    Returns:
        A dict with one count per component (`embeddings`: token and learned position tables;
        `attention`; `mlp`; `norms`; `head`: an untied output matrix or the LSTM head;
        `recurrent`: LSTM cells), `total` (equals `model.count_params()`), `per_layer` (one
        block) and `compute` (parameters that take part in a matmul per token: everything except
        pure lookup tables; a tied embedding counts because the head multiplies by it).

    Examples:

    >>> from kerasllm.models.presets import get_preset
    >>> count_params(get_preset("gpt2-124m"))["total"]
    124439808
    """
    weights = weight_shapes(model_config, vocab_size)
    counts = {name: 0 for name in COMPONENTS}
    for w in weights:
        counts[w.component] += w.size
    counts["total"] = sum(w.size for w in weights)
    counts["per_layer"] = sum(w.size for w in weights if w.layer == 0)
    lookup = sum(w.size for w in weights if w.path == "position_embedding/embeddings")
    if not model_config.tie_embeddings:  # untied: the token table is only looked up
        lookup += sum(w.size for w in weights if w.path == "token_embedding/embeddings")
    counts["compute"] = counts["total"] - lookup
    return counts
