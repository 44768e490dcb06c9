"""Training: optimizer and schedule, callbacks, and the pretraining run."""

from kerasllm.training.finetune import finetune
from kerasllm.training.optimizers import build_optimizer, build_schedule
from kerasllm.training.run import compile_model, load_run, prepare_data, pretrain, sample_text

__all__ = [
    "build_optimizer",
    "build_schedule",
    "compile_model",
    "finetune",
    "load_run",
    "prepare_data",
    "pretrain",
    "sample_text",
]
