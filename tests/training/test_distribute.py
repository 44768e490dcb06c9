"""Distribution for real on CPU, each in a fresh process (device setup must precede TF's start):
MirroredStrategy over 2 logical CPUs vs one device, MultiWorkerMirroredStrategy with two local
workers, TPU resolver fallback, and keras.distribution on JAX with 2 host devices."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO_ROOT, free_ports

pytestmark = pytest.mark.slow

TINY = dict(
    model=dict(n_layer=1, n_head=2, n_embd=16, block_size=16),
    train=dict(batch_size=8, max_steps=12, eval_interval=4, eval_steps=2, warmup_steps=2, grad_clip=0.0,
               learning_rate=3e-3),
)

PRELUDE = """
import json, sys
from kerasllm.config import Config
from kerasllm.training import pretrain
from kerasllm.training.callbacks import read_log

def tiny(corpus, **train):
    config = Config.from_dict({"data": {"dataset": corpus}, **json.loads(sys.argv[2])})
    for key, value in train.items():
        config.set("train." + key, value)
    return config

def summary(run_dir, metrics):
    rows = read_log(run_dir + "/log.csv")
    return {"loss": [float(r["loss"]) for r in rows],
            "val_loss": [float(r["val_loss"]) for r in rows if r["val_loss"]],
            "metrics": metrics}
"""


def python(script, *args, env=None, timeout=400):
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script), *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=REPO_ROOT, timeout=timeout,
    )


def last_json(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(" ".join(rng.choice(words, size=8000)) + "\n", encoding="utf-8")
    return path


def test_mirrored_over_two_logical_cpus_matches_one_device(corpus, tmp_path):
    result = python(
        """
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        out = {}
        for strategy in ("default", "mirrored"):
            lines = []
            config = tiny(sys.argv[1], strategy=strategy, jit_compile=(strategy == "mirrored"))
            _, _, metrics = pretrain(config, sys.argv[3] + "/" + strategy, log=lines.append, verbose=0)
            out[strategy] = summary(sys.argv[3] + "/" + strategy, metrics)
            out[strategy]["lines"] = lines
        print(json.dumps(out))
        """,
        corpus, json.dumps(TINY), tmp_path,
    )
    out = last_json(result)
    one, mirrored = out["default"], out["mirrored"]
    assert any(line.startswith("strategy mirrored with 2 replicas") for line in mirrored["lines"])
    assert any("jit_compile: off under mirrored" in line for line in mirrored["lines"])
    assert mirrored["metrics"]["replicas"] == 2 and one["metrics"]["replicas"] == 1
    assert len(one["loss"]) == len(mirrored["loss"]) == 3
    # Same batches, split 4 + 4 and all-reduced: the curves agree to float32 summation order.
    np.testing.assert_allclose(mirrored["loss"], one["loss"], rtol=1e-4)
    np.testing.assert_allclose(mirrored["val_loss"], one["val_loss"], rtol=1e-4)
    assert one["loss"][-1] < one["loss"][0]


def test_multi_worker_mirrored_two_local_workers_agree(corpus, tmp_path):
    script = """
        config = tiny(sys.argv[1], strategy="auto")
        lines = []
        _, _, metrics = pretrain(config, sys.argv[3], log=lines.append, verbose=0)
        print(json.dumps({"lines": lines, "metrics": metrics}))
        """
    workers = [f"localhost:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", TF_CONFIG=json.dumps(tf_config))
        processes.append(subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(script), str(corpus), json.dumps(TINY),
             str(tmp_path / "run"), str(index)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
        ))
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=400)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 0, stdout[-2000:] + stderr[-4000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for result in results:
        assert any(line.startswith("strategy multi_worker with 2 replicas") for line in result["lines"])
    chief, other = results
    assert chief["metrics"]["val_loss"] == pytest.approx(other["metrics"]["val_loss"], rel=1e-6)
    chief_rows = [r["loss"] for r in _rows(tmp_path / "run")]
    other_rows = [r["loss"] for r in _rows(tmp_path / "run" / "worker-1")]
    assert chief_rows == other_rows and len(chief_rows) == 3  # both workers hold the same model
    assert (tmp_path / "run" / "model.keras").is_file() and (tmp_path / "run" / "worker-1" / "model.keras").is_file()


def _rows(run_dir):
    import csv

    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tpu_resolver_failure_falls_back_with_a_clear_line():
    result = python(
        """
        from kerasllm.training.distribute import resolve_placement
        lines = []
        placement = resolve_placement("tpu", log=lines.append)
        print(json.dumps({"kind": placement.kind, "replicas": placement.replicas, "lines": lines}))
        """,
        "", "{}",
    )
    out = last_json(result)
    assert out["kind"] == "default" and out["replicas"] == 1
    assert len(out["lines"]) == 1 and out["lines"][0].startswith("strategy: no TPU found (")
    assert out["lines"][0].endswith("falling back to the default strategy")


@pytest.mark.parametrize("model_parallel", [1, 2])
def test_jax_keras_distribution_on_two_host_devices(corpus, tmp_path, model_parallel):
    result = python(
        """
        import keras
        assert keras.backend.backend() == "jax"
        lines = []
        config = tiny(sys.argv[1], model_parallel=int(sys.argv[4]), jit_compile=True)
        model, _, metrics = pretrain(config, sys.argv[3], log=lines.append, verbose=0)
        out = summary(sys.argv[3], metrics)
        out["lines"] = lines
        out["specs"] = {v.path: str(v.value.sharding.spec) for v in model.trainable_variables}
        print(json.dumps(out))
        """,
        corpus, json.dumps(TINY), tmp_path / "run", model_parallel,
        env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    out = last_json(result)
    expected = "strategy data_parallel with 2 replicas" if model_parallel == 1 else \
        "strategy model_parallel (1 data x 2 model) with 1 replica"
    assert any(line.startswith(expected) for line in out["lines"]), out["lines"]
    assert out["loss"][-1] < out["loss"][0] and np.isfinite(out["metrics"]["val_loss"])
    sharded = [path for path, spec in out["specs"].items() if "'model'" in spec]
    assert bool(sharded) == (model_parallel == 2), out["specs"]
