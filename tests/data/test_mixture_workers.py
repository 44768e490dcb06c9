"""Under `multi_worker` each worker reads only its own rows of every training batch of a mixture,
and the run is the single-process run: two local workers (MultiWorkerMirroredStrategy on
127.0.0.1) against one process, on the same two-source recipe."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO_ROOT, free_ports

pytestmark = pytest.mark.slow

BATCH = 8

SCRIPT = """
import json, sys
from kerasllm.config import load_config
from kerasllm.data.mixture import MixtureSchedule
from kerasllm.training import pretrain
from kerasllm.training.callbacks import read_log

reads = []  # window rows each schedule lookup serves: one worker's share of a batch
lookup = MixtureSchedule.lookup
def counting(self, first, count):
    reads.append(int(count))
    return lookup(self, first, count)
MixtureSchedule.lookup = counting

config = load_config(sys.argv[1], json.loads(sys.argv[3]))
lines = []
_, _, metrics = pretrain(config, sys.argv[2], log=lines.append, verbose=0)
rows = read_log(sys.argv[2] + "/log.csv")
print(json.dumps({"lines": lines, "reads": reads, "loss": [float(r["loss"]) for r in rows],
                  "val_loss": metrics["val_loss"]}))
"""

SETTINGS = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", f"train.batch_size={BATCH}",
    "train.max_steps=12", "train.eval_interval=4", "train.eval_steps=2", "train.warmup_steps=2",
    "train.grad_clip=0.0", "train.learning_rate=3e-3", "train.jit_compile=false",
]


def start(recipe, output, tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(recipe), str(output), json.dumps(SETTINGS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
    )


def result(process):
    try:
        stdout, stderr = process.communicate(timeout=500)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture
def recipe(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for name, words in [("numbers", ["one", "two", "three", "four"]), ("colours", ["red", "green", "blue"])]:
        path = tmp_path / f"{name}.txt"
        path.write_text(" ".join(rng.choice(words, size=6000)) + "\n", encoding="utf-8")
        files.append(path)
    recipe = tmp_path / "mixture.toml"
    recipe.write_text(
        f'[data]\ncache_dir = "{tmp_path / "cache"}"\n\n'
        f'[[data.sources]]\ndataset = "{files[0]}"\nweight = 2\n\n[[data.sources]]\ndataset = "{files[1]}"\n'
    )
    return recipe


def test_each_worker_reads_its_share_of_a_mixture_and_the_run_is_the_single_process_run(recipe, tmp_path):
    single = result(start(recipe, tmp_path / "single"))  # prepares the stores the workers then reuse
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = [
        start(recipe, tmp_path / "multi", {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]
    chief, other = [result(p) for p in processes]
    for out in (chief, other):
        assert any(line.startswith("strategy multi_worker with 2 replicas") for line in out["lines"])
        # after the validation set's one lookup, every training lookup is half a batch
        assert set(out["reads"][1:]) == {BATCH // 2}, out["reads"][:10]
    assert set(single["reads"][1:]) == {BATCH}
    assert chief["loss"] == other["loss"] and len(chief["loss"]) == 3
    # Each global batch is the single-process batch, split 4 + 4 and all-reduced.
    np.testing.assert_allclose(chief["loss"], single["loss"], rtol=1e-4)
    assert chief["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)
