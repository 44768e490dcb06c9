"""Text generation: cached decoding and samplers."""

from kerasllm.generation.generator import Generator
from kerasllm.generation.sampling import sample_next
from kerasllm.generation.stopping import StopStrings

__all__ = ["Generator", "StopStrings", "sample_next"]
