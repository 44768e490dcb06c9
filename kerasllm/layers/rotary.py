"""Rotary position embeddings, plain or with the frequency scaling of published checkpoints."""

import math

import numpy as np
from keras import ops
from keras_hub.layers import RotaryEmbedding

ROPE_SCALING_TYPES = ("none", "linear", "llama3")


class Llama3RotaryEmbedding(RotaryEmbedding):
    """RoPE with Llama 3.1's frequency scaling (`rope_scaling = {"rope_type": "llama3", ...}`).

    Wavelengths longer than `original_context / low_freq_factor` are stretched by `factor`,
    those shorter than `original_context / high_freq_factor` are kept, and the band between is
    interpolated smoothly: Hugging Face's `_compute_llama3_parameters`, computed once in numpy.

    Examples:

    >>> import numpy as np
    >>> layer = Llama3RotaryEmbedding(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    ...                               original_context=16, max_wavelength=500000.0)
    >>> tuple(layer(np.ones((1, 3, 2, 8), "float32")).shape)
    (1, 3, 2, 8)
    """

    def __init__(self, factor, low_freq_factor, high_freq_factor, original_context, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
        self.low_freq_factor = low_freq_factor
        self.high_freq_factor = high_freq_factor
        self.original_context = original_context

    def _get_inverse_freq(self, rotary_dim):
        return ops.convert_to_tensor(llama3_inverse_frequencies(
            rotary_dim, self.max_wavelength, self.factor, self.low_freq_factor,
            self.high_freq_factor, self.original_context,
        ))

    def get_config(self):
        config = super().get_config()
        config.update(
            factor=self.factor, low_freq_factor=self.low_freq_factor,
            high_freq_factor=self.high_freq_factor, original_context=self.original_context,
        )
        return config


def llama3_inverse_frequencies(rotary_dim, theta, factor, low_freq_factor, high_freq_factor, original_context):
    """float32 `(rotary_dim // 2,)` inverse frequencies of Llama 3.1's scaled RoPE."""
    inverse = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    wavelength = 2 * math.pi / inverse
    low_wavelength = original_context / low_freq_factor
    high_wavelength = original_context / high_freq_factor
    scaled = np.where(wavelength > low_wavelength, inverse / factor, inverse)
    smooth = (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= high_wavelength) & (wavelength <= low_wavelength)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def make_rotary(theta, scaling=None, dtype=None, name="rotary"):
    """The RoPE layer for base wavelength `theta` and an optional scaling dict.

    Args:
        theta: base wavelength (`rope_theta`).
        scaling: `None` (or `{"type": "none"}`), `{"type": "linear", "factor": f}` (positions
            divided by f) or `{"type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
            "original_context"}`.
    """
    kind = (scaling or {}).get("type", "none")
    if kind == "none":
        return RotaryEmbedding(max_wavelength=theta, dtype=dtype, name=name)
    if kind == "linear":
        return RotaryEmbedding(max_wavelength=theta, scaling_factor=scaling["factor"], dtype=dtype, name=name)
    if kind == "llama3":
        return Llama3RotaryEmbedding(
            scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"],
            scaling["original_context"], max_wavelength=theta, dtype=dtype, name=name,
        )
    raise ValueError(f"rope scaling type must be one of {', '.join(ROPE_SCALING_TYPES)}, got {kind!r}")
