"""Never lose work: a run killed with SIGKILL, or stopped with Ctrl-C, resumes to the same result.

Each test runs the pretrain CLI in subprocesses: one uninterrupted reference run (shared), then a
run that is interrupted mid-training and re-run with the same command. Tolerance: the final
weights agree within 1e-5 absolute and the per-interval training losses after the resume point
within 1e-5, which only holds if the resumed run saw the same batches, learning rates and
dropout masks (dropout is on).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import kerasllm.models.gpt  # noqa: F401  (registers GPT for load_model; kerasllm.models imports it lazily)
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

MAX_STEPS = 120
SETTINGS = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "model.dropout=0.1",
    "train.batch_size=4", f"train.max_steps={MAX_STEPS}", "train.eval_interval=50", "train.eval_steps=2",
    "train.checkpoint_every=5", "train.warmup_steps=10", "train.jit_compile=false", "train.keep_checkpoints=2",
]


def command(corpus, output):
    """The pretrain command on `corpus`: a text file (`--data`), or a recipe file (a mixture)."""
    source = ["--recipe", str(corpus)] if str(corpus).endswith(".toml") else ["--data", str(corpus)]
    args = [sys.executable, "-m", "kerasllm.recipes.pretrain", *source, "--output", str(output), "--no-sample"]
    for setting in SETTINGS:
        args += ["--set", setting]
    return args


def run(corpus, output):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return subprocess.run(command(corpus, output), capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=300)


def start_and_interrupt(corpus, output, sig, after_step=20):
    """Starts a run and sends `sig` once a checkpoint at `after_step` or later exists."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command(corpus, output), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=REPO_ROOT)
    latest = output / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if latest.is_file() and '"step": ' in (text := latest.read_text() if latest.is_file() else ""):
                step = int(text.split('"step": ')[1].split(",")[0])
                if step >= after_step:
                    process.send_signal(sig)
                    break
            time.sleep(0.02)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(" ".join(rng.choice(words, size=20000)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mixture(corpus, tmp_path_factory):
    """A recipe mixing `corpus` (weight 3) with a corpus of other words (weight 1)."""
    folder = tmp_path_factory.mktemp("mixture")
    rng = np.random.default_rng(1)
    other = folder / "other.txt"
    other.write_text(" ".join(rng.choice(["all", "the", "world", "a", "stage"], size=8000)) + "\n", encoding="utf-8")
    recipe = folder / "mixture.toml"
    recipe.write_text(
        f'name = "mixture"\n\n[[data.sources]]\ndataset = "{corpus}"\nweight = 3\n\n'
        f'[[data.sources]]\ndataset = "{other}"\n', encoding="utf-8",
    )
    return recipe


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference") / "run"
    result = run(corpus, output)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def losses(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def assert_same_run(resumed, reference, resumed_from):
    mine, theirs = losses(resumed), losses(reference)
    assert sorted(mine) == sorted(theirs)  # one row per interval, none duplicated by the crash
    # (the row ending an interval resumed in its middle averages only the batches after the resume)
    after = [s for s in theirs if s > resumed_from + (resumed_from % 5 and 5 - resumed_from % 5)]
    assert after
    np.testing.assert_allclose([mine[s] for s in after], [theirs[s] for s in after], atol=1e-5)
    a = keras.models.load_model(resumed / "model.keras", compile=False).get_weights()
    b = keras.models.load_model(reference / "model.keras", compile=False).get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)


def resumed_step(stdout):
    line = next(line for line in stdout.splitlines() if line.startswith("resuming from"))
    return int(line.split(" at step ")[1].split()[0])


def test_sigkill_then_same_command_resumes_to_the_same_weights(corpus, reference, tmp_path):
    output = tmp_path / "run"
    code, _ = start_and_interrupt(corpus, output, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (output / "model.keras").exists()
    result = run(corpus, output)
    assert result.returncode == 0, result.stderr[-3000:]
    step = resumed_step(result.stdout)
    assert 20 <= step < MAX_STEPS and step % 5 == 0
    assert_same_run(output, reference, step)


@pytest.mark.parametrize("sig, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"])
def test_a_signal_saves_a_checkpoint_and_resumes_mid_interval(corpus, reference, tmp_path, sig, exit_code):
    output = tmp_path / "run"
    code, stderr = start_and_interrupt(corpus, output, sig)
    assert code == exit_code, stderr[-2000:]
    assert not list(output.glob("**/*.partial.keras"))
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: interrupted at step") and "checkpoint" in message
    result = run(corpus, output)
    assert result.returncode == 0, result.stderr[-3000:]
    step = resumed_step(result.stdout)
    assert 20 <= step < MAX_STEPS
    assert_same_run(output, reference, step)

    restarted = subprocess.run(
        command(corpus, output) + ["--restart", "--set", "train.max_steps=5"], capture_output=True, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), cwd=REPO_ROOT, timeout=300,
    )
    assert restarted.returncode == 0 and "resuming" not in restarted.stdout
    # --restart deletes the old run completely: only the new run's checkpoints remain.
    steps = sorted(json.loads(p.read_text())["step"] for p in (output / "checkpoints").glob("ckpt-*.json"))
    assert steps and max(steps) == 5, steps


def test_a_mixture_killed_and_resumed_sees_the_batches_of_an_uninterrupted_run(mixture, tmp_path):
    reference = tmp_path / "reference"
    result = run(mixture, reference)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: a mixture of 2 sources" in result.stdout
    output = tmp_path / "run"
    code, _ = start_and_interrupt(mixture, output, signal.SIGKILL)
    assert code == -signal.SIGKILL
    result = run(mixture, output)
    assert result.returncode == 0, result.stderr[-3000:]
    step = resumed_step(result.stdout)
    assert 20 <= step < MAX_STEPS
    assert_same_run(output, reference, step)  # same losses after the resume point, same weights

    reweighted = subprocess.run(
        command(mixture, output) + ["--set", "train.max_steps=200", "--set", "data.sources[1].weight=2"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), cwd=REPO_ROOT, timeout=300,
    )
    assert reweighted.returncode == 2 and "data.sources is" in reweighted.stderr  # other batches: refused
