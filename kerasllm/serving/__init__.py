"""An OpenAI-compatible HTTP server for kerasllm runs (`python -m kerasllm.recipes.serve`).

`ServedModel` loads a run, `BatchScheduler` batches concurrent requests into the decoding
loop, `create_app` builds the Starlette application (needs the `serve` extra).
"""

from kerasllm.serving.batching import BatchScheduler, Job, Sampling
from kerasllm.serving.model import ServedModel
from kerasllm.serving.scoring import token_logprobs

__all__ = ["BatchScheduler", "Job", "Sampling", "ServedModel", "create_app", "token_logprobs"]


def create_app(*args, **kwargs):
    """`kerasllm.serving.app.create_app`, imported on first use (Starlette is an extra)."""
    from kerasllm.serving.app import create_app as create

    return create(*args, **kwargs)
