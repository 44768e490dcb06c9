"""Normalization layer factory (LayerNorm or RMSNorm)."""

import keras


def make_norm(kind, epsilon=1e-5, use_bias=True, name=None, dtype=None):
    """LayerNorm (GPT-2; `use_bias=False` drops its beta, as nanoGPT's `bias=False`) or RMSNorm.

    Normalization statistics are computed in float32 under mixed precision (Keras does this
    for both layers), so norms stay numerically safe in float16/bfloat16.
    """
    if kind == "layernorm":
        return keras.layers.LayerNormalization(epsilon=epsilon, center=use_bias, name=name, dtype=dtype)
    if kind == "rmsnorm":
        return keras.layers.RMSNormalization(epsilon=epsilon, name=name, dtype=dtype)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")
