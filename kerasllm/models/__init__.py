"""Language models: `GPT` and the `LSTMLanguageModel` baseline.

`GPT` and `LSTMLanguageModel` are imported on first use, so `kerasllm.models.presets` (all
`plan --help` needs) loads without Keras or TensorFlow.
"""

import functools

from kerasllm.config import remat_problem
from kerasllm.errors import ConfigError


def __getattr__(name):
    if name == "GPT":
        from kerasllm.models.gpt import GPT as value
    elif name == "LSTMLanguageModel":
        from kerasllm.models.lstm import LSTMLanguageModel as value
    else:
        raise AttributeError(f"module 'kerasllm.models' has no attribute {name!r}")
    globals()[name] = value
    return value


def build_model(model_config, vocab_size=None, remat=False):
    """Builds (and initializes) the model a `ModelConfig` describes.

    Args:
        model_config: a `kerasllm.config.ModelConfig`.
        vocab_size: overrides `model_config.vocab_size` (normally the tokenizer's size).
        remat: rematerialize each GPT decoder block in the backward pass (`plan.remat = "on"`,
            see `rematerialize_blocks`). GPT only, and only with `model.dropout = 0`.

    Returns:
        A built `GPT` or `LSTMLanguageModel`.

    Raises:
        ConfigError: an option out of range or against a rule of `ModelConfig.validate` (the
            rules live in `kerasllm.config`), no vocabulary size, or `remat` with an LSTM or
            with dropout.

    Examples:

    >>> from kerasllm.config import ModelConfig
    >>> model = build_model(ModelConfig(n_layer=1, n_embd=32, n_head=2), vocab_size=10)
    >>> model.count_params() > 0
    True
    """
    from kerasllm.models.gpt import GPT
    from kerasllm.models.lstm import LSTMLanguageModel

    c = model_config.validate()  # the same rules as a recipe's [model] table
    if remat:
        check_remat(c)
    vocab_size = vocab_size or c.vocab_size
    if not vocab_size:
        raise ConfigError("model.vocab_size is 0 and no tokenizer gave a vocabulary size")
    if c.arch == "gpt":
        model = GPT(
            vocab_size=vocab_size, block_size=c.block_size, n_layer=c.n_layer, n_head=c.n_head,
            n_embd=c.n_embd, n_kv_head=c.n_kv_head or None, mlp_hidden=c.mlp_hidden or None,
            mlp=c.mlp, norm=c.norm, norm_eps=c.norm_eps, positions=c.positions,
            rope_theta=c.rope_theta, dropout=c.dropout, bias=c.bias,
            tie_embeddings=c.tie_embeddings, **checkpoint_options(c),
        )
        if remat:
            rematerialize_blocks(model)
    else:  # "lstm": validate() allows no other arch
        model = LSTMLanguageModel(
            vocab_size=vocab_size, block_size=c.block_size, n_layer=c.n_layer, n_embd=c.n_embd,
            hidden_size=c.hidden_size or None, dropout=c.dropout, tie_embeddings=c.tie_embeddings,
        )
    model.build((None, c.block_size))
    return model


def checkpoint_options(model_config):
    """The `GPT` keyword arguments of the `ModelConfig` options published checkpoints need.

    Examples:

    >>> from kerasllm.config import ModelConfig
    >>> checkpoint_options(ModelConfig(rope_scaling="linear", rope_factor=2.0))["rope_scaling"]
    {'type': 'linear', 'factor': 2.0}
    """
    c = model_config
    scaling = None
    if c.rope_scaling == "linear":
        scaling = {"type": "linear", "factor": c.rope_factor}
    elif c.rope_scaling == "llama3":
        scaling = {
            "type": "llama3", "factor": c.rope_factor, "low_freq_factor": c.rope_low_freq_factor,
            "high_freq_factor": c.rope_high_freq_factor, "original_context": c.rope_original_context,
        }
    return dict(
        mlp_activation=c.mlp_activation, qkv_bias=c.qkv_bias, head_dim=c.head_dim or None,
        qk_norm=c.qk_norm, rope_scaling=scaling, scale_embeddings=c.scale_embeddings,
    )


def check_remat(model_config):
    """Raises `ConfigError` unless `plan.remat = "on"` can apply to the model `model_config` describes."""
    problem = remat_problem(model_config)  # the rule `Config.validate` applies to a recipe
    if problem:
        raise ConfigError(problem)


def rematerialize_blocks(model):
    """Makes each decoder block of a `GPT` recompute its activations in the backward pass.

    Only each block's input is kept for the backward pass; its attention scores, MLP
    activations and norms are recomputed there from it (`keras.remat`: `tf.recompute_grad` on
    TensorFlow, `jax.checkpoint` on JAX), trading about a third more compute for activation
    memory (see `kerasllm.plan.memory`). Results are unchanged (tested to float32 rounding).

    Only training calls are rematerialized: evaluation and cached generation have no
    backward pass. Not saved with the model: a loaded model computes without it.

    `keras.RematScope(mode="list_of_layers")` would do this at construction time, but with
    Keras 3.15 it fails on both backends for these blocks: TensorFlow's `recompute_grad`
    rejects the keyword arguments (`attention_mask`, `positions`, `training`) inside
    `tf.function`, and JAX traces them as arrays. So only the hidden states go through
    `keras.remat` here; the other arguments are closed over.

    Args:
        model: a `GPT`, before it is first called.

    Returns:
        `model`.
    """
    for block in model.blocks:
        block.call = _rematerialized(block.call)
    return model


def _rematerialized(call):
    @functools.wraps(call)
    def rematerialized_call(x, *args, **kwargs):
        if not kwargs.get("training") or args or kwargs.get("cache") is not None:
            return call(x, *args, **kwargs)
        import keras

        return keras.remat(lambda hidden: call(hidden, **kwargs))(x)

    return rematerialized_call


__all__ = ["GPT", "LSTMLanguageModel", "build_model", "check_remat", "rematerialize_blocks"]
