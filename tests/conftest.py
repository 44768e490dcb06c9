"""Shared fixtures: the shared data folder, tiny configs and a quiet TensorFlow."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir():
    """`$KERASLLM_SHARED_DATA`, else `../shared/data` beside the repo root."""
    env = os.environ.get("KERASLLM_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path to the shared corpora; skips the test when they are absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared corpora not found at {path} (set KERASLLM_SHARED_DATA)")
    return path


@pytest.fixture
def tiny_overrides():
    """`--set` overrides that shrink any recipe to a few seconds of training."""
    return [
        "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "train.batch_size=4", "train.max_steps=6", "train.eval_interval=3", "train.eval_steps=2",
        "train.warmup_steps=1", "train.jit_compile=false", "sample.max_new_tokens=5",
    ]


def free_ports(n):
    """`n` distinct free TCP ports on 127.0.0.1 (for local multi-worker clusters)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_module(module, *args, env=None, timeout=600):
    """Runs `python -m module args...` and returns the CompletedProcess."""
    import subprocess

    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO_ROOT,
    )
