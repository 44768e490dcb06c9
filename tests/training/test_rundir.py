"""Run directories you can trust: a writer's lock, no overwriting another run, resume checks,
damaged files named and skipped, filesystem errors as one line."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import REPO_ROOT
from kerasllm.config import Config, ModelConfig, TrainConfig
from kerasllm.errors import RunError
from kerasllm.training import pretrain
from kerasllm.training.rundir import RunDir, check_keras_file, load_run

TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16)


def tiny_config(text_file, **train):
    config = Config()
    config.model = ModelConfig(**TINY)
    config.data.dataset = str(text_file)
    config.train = TrainConfig(**{**dict(batch_size=4, max_steps=6, eval_interval=3, eval_steps=2, warmup_steps=1,
                                         jit_compile=False, checkpoint_every=2, keep_checkpoints=3), **train})
    return config


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(" ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat"], size=4000)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(text_file, tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 2, 4 and 6."""
    output = tmp_path_factory.mktemp("runs") / "run"
    pretrain(tiny_config(text_file), output, log=lambda *_: None, verbose=0)
    return output


def copy_run(source, target):
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def quiet(*_):
    pass


def test_a_second_writer_gets_the_holders_pid_and_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(REPO_ROOT)!r})
            from kerasllm.training.rundir import RunDir
            run = RunDir({str(tmp_path)!r}).lock()  # held while `run` lives
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=rf"in use by another kerasllm process \(pid {holder.pid}\)"):
            RunDir(tmp_path).lock()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunDir(tmp_path) as run:  # the kernel dropped the dead holder's lock
        assert (run.path / ".lock").read_text() == str(os.getpid())


def test_another_kind_of_run_or_stray_files_are_never_overwritten(tmp_path):
    classifier = RunDir(tmp_path / "clf").create()
    classifier.config_path.write_text('name = "x"\n')
    classifier.write_json(classifier.finetune_path, {"task": "classify"})
    with pytest.raises(RunError, match=r"holds a classifier run; pretrain writes a lm run.*--overwrite"):
        classifier.claim("lm", what="pretrain")
    stray = RunDir(tmp_path / "stray").create()
    (stray.path / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="files that are not a kerasllm run"):
        stray.claim("lm")
    classifier.claim("lm", overwrite=True)
    assert [p.name for p in classifier.path.iterdir()] == []


def test_pretrain_refuses_a_classifier_directory(text_file, tmp_path):
    run = RunDir(tmp_path / "clf").create()
    run.config_path.write_text('name = "x"\n')
    run.record("classifier")
    (run.model_path).write_bytes(b"the classifier")
    with pytest.raises(RunError, match="holds a classifier run"):
        pretrain(tiny_config(text_file), run.path, log=quiet, verbose=0)
    assert run.model_path.read_bytes() == b"the classifier"


def test_resume_with_another_model_or_data_is_one_error_naming_the_keys(trained, text_file, tmp_path):
    output = copy_run(trained, tmp_path / "run")
    config = tiny_config(text_file, max_steps=8)
    config.model.n_layer = 2
    config.data.tokenizer = "byte"
    with pytest.raises(RunError) as error:
        pretrain(config, output, log=quiet, verbose=0)
    message = str(error.value)
    assert "model.n_layer is 2 here but 1 in the run" in message and "data.tokenizer is 'byte'" in message
    assert "--restart" in message and "\n" not in message


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(trained, text_file, tmp_path):
    output = copy_run(trained, tmp_path / "run")
    run = RunDir(output)
    newest = run.checkpoint_path(6)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(RunError, match="damaged"):
        check_keras_file(newest)
    lines = []
    path, info = run.latest_checkpoint(log=lines.append)
    assert info["step"] == 4 and "damaged" in lines[0]
    _, _, metrics = pretrain(tiny_config(text_file, max_steps=8), output, log=lines.append, verbose=0)
    assert metrics["steps"] == 8 and any("resuming from" in line and "ckpt-0000004" in line for line in lines)


def test_damaged_files_are_named_not_misreported(trained, tmp_path):
    output = copy_run(trained, tmp_path / "run")
    run = RunDir(output)
    run.model_path.write_bytes(run.model_path.read_bytes()[:1000])
    with pytest.raises(RunError, match=r"model\.keras: damaged"):
        load_run(output)
    run.latest_path.write_text("{not json")
    assert run.latest_checkpoint()[1]["step"] == 6  # latest.json is a copy; the info files decide
    run.metrics_path.write_text("{not json")
    with pytest.raises(RunError, match=r"metrics\.json: damaged JSON"):
        run.read_metrics()


@pytest.mark.parametrize("where", ["a regular file", "under /proc", "read-only"])
def test_unusable_output_paths_are_one_error_naming_the_path(tmp_path, where):
    if where == "a regular file":
        path = tmp_path / "file"
        path.write_text("x")
    elif where == "under /proc":
        path = "/proc/kerasllm-run"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write into read-only directories")
        os.chmod(tmp_path, 0o500)
        path = tmp_path / "run"
    with pytest.raises(RunError, match=str(path)):
        RunDir(path).create()


@pytest.mark.slow
def test_two_concurrent_pretrains_one_runs_one_gets_the_lock_error(text_file, tmp_path):
    output = tmp_path / "run"
    settings = [f"model.{k}={v}" for k, v in TINY.items()] + [
        "train.batch_size=4", "train.max_steps=30", "train.eval_interval=10", "train.eval_steps=2",
        "train.warmup_steps=1", "train.jit_compile=false", "train.checkpoint_every=1",
    ]
    command = [sys.executable, "-m", "kerasllm.recipes.pretrain", "--data", str(text_file), "--output", str(output),
               "--no-sample", *[a for s in settings for a in ("--set", s)]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    deadline = time.monotonic() + 240
    while not (output / "checkpoints" / "latest.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # hold the first writer mid-run, lock taken, however loaded the host
    try:
        second = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr.strip().splitlines()[-1]
    steps = [line.split(",")[0] for line in (output / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps), key=int) and steps[-1] == "30"


def test_a_failed_run_leaves_no_empty_directory(tmp_path):
    config = Config()
    config.data.dataset = str(tmp_path / "missing.txt")
    with pytest.raises(Exception):
        pretrain(config, tmp_path / "run", log=quiet, verbose=0)
    assert not (tmp_path / "run").exists()
