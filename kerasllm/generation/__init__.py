"""Text generation: cached decoding and samplers."""

from kerasllm.generation.generator import Generator
from kerasllm.generation.sampling import sample_next

__all__ = ["Generator", "sample_next"]
