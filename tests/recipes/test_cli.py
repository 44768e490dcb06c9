"""The command-line contract of the pretrain and generate recipes."""

import json

import pytest

from conftest import run_module
from kerasllm.config import load_config

RUN_FILES = ["config.toml", "tokenizer/tokenizer.json", "checkpoints/latest.json", "log.csv",
             "model.keras", "metrics.json"]
METRIC_KEYS = ["train_loss", "val_loss", "val_bits_per_token", "val_perplexity", "steps",
               "tokens_seen", "tokens_per_second", "wall_seconds", "parameters"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    return path


def _sets(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.mark.slow
def test_pretrain_then_generate_end_to_end(tmp_path, corpus, tiny_overrides):
    out = tmp_path / "run"
    result = run_module("kerasllm.recipes.pretrain", "--data", corpus, "--output", out, *_sets(tiny_overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in RUN_FILES:
        assert (out / name).exists(), name
    assert list((out / "checkpoints").glob("ckpt-*.keras"))
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert metrics[key] is not None, key
    assert metrics["steps"] == 6 and metrics["tokens_seen"] == 6 * 4 * 16
    assert metrics["val_bits_per_char"] == metrics["val_bits_per_token"]
    assert "val_loss" in result.stdout and "--- sample" in result.stdout
    assert load_config(str(out / "config.toml")).train.max_steps == 6

    gen = run_module("kerasllm.recipes.generate", "--model", out, "--prompt", "the ",
                     "--max-new-tokens", "12", "--seed", "1", "--temperature", "0")
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stdout.startswith("the ") and len(gen.stdout.rstrip("\n")) == 16
    new = gen.stdout.rstrip("\n")[4:]
    stop = new[3:5]
    stopped = run_module("kerasllm.recipes.generate", "--model", out, "--prompt", "the ", "--max-new-tokens", "12",
                         "--temperature", "0", "--stop", stop, "--stop", "never")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert stopped.stdout == "the " + new[: new.index(stop)] + "\n"
    beams = run_module("kerasllm.recipes.generate", "--model", out, "--prompt", "the ", "--max-new-tokens", "12",
                       "--num-beams", "3", "--length-penalty", "0.5")
    assert beams.returncode == 0, beams.stderr[-3000:]
    assert beams.stdout.startswith("the ") and len(beams.stdout.rstrip("\n")) == 16

    # Running the same command again finds the finished checkpoint and does not retrain.
    again = run_module("kerasllm.recipes.pretrain", "--data", corpus, "--output", out,
                       "--no-sample", *_sets(tiny_overrides))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained to step 6" in again.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/missing.txt"], "missing.txt: no such file"),
        # Each data error costs a CLI start with TensorFlow: the quick loop keeps the first.
        pytest.param(["--data", "{tmp}/empty.txt"], "empty.txt: the file is empty", marks=pytest.mark.slow),
        pytest.param(["--data", "{tmp}/blank.txt"], "blank.txt: only whitespace, no text", marks=pytest.mark.slow),
        pytest.param(["--data", "{tmp}/blob.bin"], "blob.bin: looks like a binary file", marks=pytest.mark.slow),
        (["--set", "train.max_stepz=3"], "unknown key 'train.max_stepz'"),
        (["--set", "train.max_steps=many"], "train.max_steps = 'many' has the wrong type; expected an integer"),
        (["--recipe", "nope"], "--recipe nope: not a file and not a recipe name"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\t\n\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01binary")
    args = [a.format(tmp=tmp_path) for a in args]
    result = run_module("kerasllm.recipes.pretrain", "--output", tmp_path / "run", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]


def test_help_documents_every_option():
    result = run_module("kerasllm.recipes.pretrain", "--help")
    assert result.returncode == 0
    for option in ["--recipe", "--data", "--output", "--set", "--restart", "model.n_layer", "train.max_steps"]:
        assert option in result.stdout


@pytest.mark.slow  # a subprocess CLI run: the quick loop keeps one of this kind
def test_generate_on_missing_run_is_clear(tmp_path):
    result = run_module("kerasllm.recipes.generate", "--model", tmp_path, "--prompt", "x")
    assert result.returncode == 2 and "not a kerasllm run directory" in result.stderr
