"""Language models: `GPT` and the `LSTMLanguageModel` baseline."""

from kerasllm.errors import ConfigError
from kerasllm.models.gpt import GPT
from kerasllm.models.lstm import LSTMLanguageModel


def build_model(model_config, vocab_size=None):
    """Builds (and initializes) the model a `ModelConfig` describes.

    Args:
        model_config: a `kerasllm.config.ModelConfig`.
        vocab_size: overrides `model_config.vocab_size` (normally the tokenizer's size).

    Returns:
        A built `GPT` or `LSTMLanguageModel`.

    Examples:

    >>> from kerasllm.config import ModelConfig
    >>> model = build_model(ModelConfig(n_layer=1, n_embd=32, n_head=2), vocab_size=10)
    >>> model.count_params() > 0
    True
    """
    c = model_config
    vocab_size = vocab_size or c.vocab_size
    if not vocab_size:
        raise ConfigError("model.vocab_size is 0 and no tokenizer gave a vocabulary size")
    for key in ("block_size", "n_layer", "n_embd", "n_head"):
        if getattr(c, key) <= 0:
            raise ConfigError(f"model.{key} = {getattr(c, key)}: expected a positive integer")
    if c.arch == "gpt":
        if c.n_embd % c.n_head:
            raise ConfigError(f"model.n_embd = {c.n_embd} must be divisible by model.n_head = {c.n_head}")
        if c.n_kv_head and c.n_head % c.n_kv_head:
            raise ConfigError(f"model.n_head = {c.n_head} must be a multiple of model.n_kv_head = {c.n_kv_head}")
        if c.positions == "rope" and (c.n_embd // c.n_head) % 2:
            raise ConfigError(f"model.positions = 'rope' needs an even head size, got {c.n_embd // c.n_head}")
        model = GPT(
            vocab_size=vocab_size, block_size=c.block_size, n_layer=c.n_layer, n_head=c.n_head,
            n_embd=c.n_embd, n_kv_head=c.n_kv_head or None, mlp_hidden=c.mlp_hidden or None,
            mlp=c.mlp, norm=c.norm, norm_eps=c.norm_eps, positions=c.positions,
            rope_theta=c.rope_theta, dropout=c.dropout, bias=c.bias,
            tie_embeddings=c.tie_embeddings,
        )
    elif c.arch == "lstm":
        model = LSTMLanguageModel(
            vocab_size=vocab_size, block_size=c.block_size, n_layer=c.n_layer, n_embd=c.n_embd,
            hidden_size=c.hidden_size or None, dropout=c.dropout, tie_embeddings=c.tie_embeddings,
        )
    else:
        raise ConfigError(f"model.arch = {c.arch!r}: expected 'gpt' or 'lstm'")
    model.build((None, c.block_size))
    return model


__all__ = ["GPT", "LSTMLanguageModel", "build_model"]
