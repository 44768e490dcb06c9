"""Mixed precision: pick and apply a Keras dtype policy from `train.precision`."""

import contextlib

import keras

from kerasllm.errors import ConfigError

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def resolve_precision(precision, strategy_kind="default", gpus=None):
    """The policy name `precision` means on this machine.

    `auto` is mixed_bfloat16 on TPU, mixed_float16 on GPU and float32 on CPU: a CPU without
    bfloat16 hardware trains 2.4-3.2x slower in `mixed_bfloat16` (benchmarks/RESULTS.md,
    "Machine facts the code relies on").

    Examples:

    >>> resolve_precision("auto", "default", gpus=0)
    'float32'
    >>> resolve_precision("auto", "mirrored", gpus=2)
    'mixed_float16'
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision = {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if strategy_kind == "tpu":
        return "mixed_bfloat16"
    if gpus is None:
        from kerasllm.training.distribute import count_gpus

        gpus = count_gpus()
    return "mixed_float16" if gpus else "float32"


@contextlib.contextmanager
def precision_scope(policy):
    """Sets Keras' global dtype policy to `policy` inside the block, restoring it after.

    Layers built inside compute in the policy's compute dtype and keep float32 variables; the
    models cast logits to float32, so softmax and the loss run in float32, and keras-hub's norm
    layers compute in float32 under mixed policies.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield keras.config.dtype_policy()
    finally:
        keras.config.set_dtype_policy(previous)


def wrap_for_policy(optimizer, policy):
    """Wraps `optimizer` in a dynamic `LossScaleOptimizer` under mixed_float16 (float16
    gradients underflow without loss scaling); other policies need none."""
    if policy == "mixed_float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
