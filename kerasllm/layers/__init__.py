"""Keras layers of the kerasllm models."""

from kerasllm.layers.attention import CausalSelfAttention
from kerasllm.layers.mlp import MLP, default_mlp_hidden
from kerasllm.layers.normalization import make_norm
from kerasllm.layers.transformer_block import DecoderBlock

__all__ = ["CausalSelfAttention", "DecoderBlock", "MLP", "default_mlp_hidden", "make_norm"]
