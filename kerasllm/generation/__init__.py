"""Text generation: one decoding loop over a model's cache, one seeded sampler."""

from kerasllm.generation.generator import Generator
from kerasllm.generation.sampling import sample_tokens, sampling_inputs
from kerasllm.generation.stopping import StopStrings

__all__ = ["Generator", "StopStrings", "sample_tokens", "sampling_inputs"]
