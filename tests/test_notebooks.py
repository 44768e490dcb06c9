"""The notebooks: committed clean, shaped for Colab and CI, and running top to bottom in smoke
mode; plus the helpers in `kerasllm.notebook` they rely on."""

import json
import os
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from kerasllm import notebook
from kerasllm.errors import DataError
from kerasllm.models import GPT

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_quickstart",
    "02_lstm_vs_transformer",
    "03_tokenizers_and_chinese",
    "04_inside_training",
    "05_finetune_classifier",
    "06_export_and_serve",
    "07_planning_a_7b_model",
]
PRESENT = [name for name in NOTEBOOKS if (NOTEBOOK_DIR / f"{name}.ipynb").is_file()]
# Files these notebooks read from the shared corpora (no registered download exists for them).
NEEDS_SHARED = {
    "03_tokenizers_and_chinese": "chinese/xiyouji.txt",
    "05_finetune_classifier": "sentiment/sst2/train.tsv",
    "06_export_and_serve": "sentiment/sst2/train.tsv",
}


def load(name):
    return json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_every_listed_notebook_exists():
    missing = [name for name in NOTEBOOKS if name not in PRESENT]
    assert not missing, f"notebooks missing from {NOTEBOOK_DIR}: {missing}"


@pytest.mark.parametrize("name", PRESENT)
def test_committed_without_outputs(name):
    for index, cell in enumerate(load(name)["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{name}.ipynb cell {index} has outputs; strip them"
            assert cell["execution_count"] is None, f"{name}.ipynb cell {index} has an execution count"


@pytest.mark.parametrize("name", PRESENT)
def test_intro_colab_and_parameters_cells(name):
    cells = load(name)["cells"]
    intro, install, parameters = cells[:3]
    assert intro["cell_type"] == "markdown" and source(intro).startswith("# ")
    assert "**Time:**" in source(intro) and "TIME_" not in source(intro), "intro must state measured times"
    assert install["cell_type"] == "code" and '"google.colab" in sys.modules' in source(install)
    assert parameters["cell_type"] == "code"
    assert 'SMOKE = os.environ.get("KERASLLM_SMOKE") == "1"' in source(parameters)
    others = [source(c) for c in cells[3:] if c["cell_type"] == "code"]
    assert not any("KERASLLM_SMOKE" in text for text in others), "only the parameters cell may read SMOKE"


@pytest.mark.parametrize("name", PRESENT)
def test_every_kerasllm_import_of_the_notebook_resolves(name):
    """The quick check of what the smoke run below would find first: a moved or renamed name."""
    import importlib
    import re

    code = "\n".join(source(c) for c in load(name)["cells"] if c["cell_type"] == "code")
    for module, names in re.findall(r"^\s*from (kerasllm[\w.]*) import ([\w, ]+)$", code, re.MULTILINE):
        imported = importlib.import_module(module)
        missing = [n.strip() for n in names.split(",") if not hasattr(imported, n.strip())]
        assert not missing, f"{name}.ipynb: `from {module} import` finds no {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESENT)
def test_runs_top_to_bottom_in_smoke_mode(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    if name in NEEDS_SHARED and notebook.shared_file(NEEDS_SHARED[name], required=False) is None:
        pytest.skip(f"{name} needs {NEEDS_SHARED[name]} from the shared corpora (set KERASLLM_SHARED_DATA)")
    monkeypatch.setenv("KERASLLM_SMOKE", "1")
    monkeypatch.setenv("KERASLLM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the failing cell
    seconds = time.perf_counter() - started
    images = sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert images >= 1, f"{name}: no plot rendered"
    assert seconds < 300, f"{name}: smoke run took {seconds:.0f} s"
    assert not any(p.name not in {".ipynb_checkpoints"} for p in NOTEBOOK_DIR.iterdir() if p.is_dir()), \
        "a notebook wrote into notebooks/"


# --- kerasllm.notebook -------------------------------------------------------------------------

def test_notebook_module_re_exports_the_library_homes():
    from kerasllm.data import shared
    from kerasllm.models import inspect
    from kerasllm.training import live

    assert notebook.LiveLossPlot is live.LiveLossPlot and notebook.TimeBudget is live.TimeBudget
    assert notebook.attention_maps is inspect.attention_maps
    assert notebook.gradient_norms is inspect.gradient_norms
    for name in ("resolve_corpus", "shared_file", "shared_data_dir", "head_lines"):
        assert getattr(notebook, name) is getattr(shared, name)


def tiny_gpt(**kwargs):
    keras.utils.set_random_seed(0)
    options = dict(vocab_size=23, block_size=12, n_layer=2, n_head=4, n_embd=32)
    options.update(kwargs)
    return GPT(**options)


@pytest.mark.parametrize("kwargs", [{}, {"n_kv_head": 2, "positions": "rope"}])
def test_attention_maps_reproduce_the_fused_attention(kwargs):
    model = tiny_gpt(**kwargs)
    ids = np.random.default_rng(0).integers(0, 23, (2, 12)).astype("int32")
    maps = notebook.attention_maps(model, ids)
    assert maps.shape == (2, 2, 4, 12, 12)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert np.triu(maps, k=1).max() == 0.0  # causal: no weight on later positions
    # probabilities @ values through the output projection == the layer's own output
    block = model.blocks[0]
    h = block.norm_1(model.embed(ids))
    attn = block.attn
    _, _, v = attn.project_qkv(h)  # (B, T, K, D)
    v = np.repeat(ops.convert_to_numpy(v), attn.n_head // attn.n_kv_head, axis=2)  # (B, T, H, D)
    y = np.einsum("bhqk,bkhd->bqhd", maps[:, 0], v).reshape(2, 12, attn.n_head * attn.head_dim)
    np.testing.assert_allclose(ops.convert_to_numpy(attn.proj(y)), ops.convert_to_numpy(attn(h)), atol=1e-5)


def test_gradient_norms_match_the_global_norm():
    import tensorflow as tf

    model = tiny_gpt()
    ids = np.random.default_rng(1).integers(0, 23, (3, 12)).astype("int32")
    loss, norms = notebook.gradient_norms(model, ids, ids)
    assert list(norms) == ["token_embedding", "position_embedding", "block_0", "block_1", "final_norm"]
    with tf.GradientTape() as tape:
        expected_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(ids, model(ids))
    grads = tape.gradient(expected_loss, model.trainable_variables)
    assert loss == pytest.approx(float(expected_loss), rel=1e-6)
    total = float(tf.linalg.global_norm(grads))
    assert np.sqrt(sum(n**2 for n in norms.values())) == pytest.approx(total, rel=1e-5)


class _FakeOptimizer:
    def __init__(self):
        self.iterations = keras.Variable(0, dtype="int64")
        self.learning_rate = 0.01
        self.grad_norm = keras.Variable(2.5)


class _FakeModel:
    def __init__(self):
        self.optimizer = _FakeOptimizer()
        self.stop_training = False


def test_live_loss_plot_recovers_per_step_losses_from_running_means():
    losses = [4.0, 3.0, 3.5, 2.0, 1.0, 1.5]
    plot = notebook.LiveLossPlot(tokens_per_step=100, every=1000, title="t")
    plot.set_model(_FakeModel())
    plot.on_train_begin()
    for epoch, chunk in enumerate((losses[:3], losses[3:])):  # Keras resets the mean every epoch
        plot.on_epoch_begin(epoch)
        for batch, _ in enumerate(chunk):
            plot.model.optimizer.iterations.assign_add(1)
            plot.on_train_batch_end(batch, {"loss": float(np.mean(chunk[: batch + 1]))})
        plot.on_epoch_end(epoch, {"loss": 0.0, "val_loss": 9.0 - epoch})
    h = plot.history
    np.testing.assert_allclose(h["loss"], losses, rtol=1e-6)
    assert h["step"] == [1, 2, 3, 4, 5, 6] and h["tokens"][-1] == 600
    assert h["val_step"] == [3, 6] and h["val_loss"] == [9.0, 8.0]
    assert h["learning_rate"][0] == pytest.approx(0.01) and h["grad_norm"][0] == pytest.approx(2.5)
    assert plot.smoothed_loss()[0] == pytest.approx(4.0)  # bias-corrected EMA starts at the value
    axes = plot.figure().axes[0]
    assert axes.get_xlabel() == "optimizer step" and "nats" in axes.get_ylabel()
    assert axes.get_title().startswith("t - step 6")
    assert plot.png().startswith(b"\x89PNG")


def test_time_budget_does_not_count_the_first_step():
    budget = notebook.TimeBudget(0.2)
    budget.set_model(_FakeModel())
    budget.on_train_begin()
    time.sleep(0.3)  # as if the first step compiled for a while
    budget.on_train_batch_end(0)
    assert not budget.model.stop_training
    time.sleep(0.3)
    budget.on_train_batch_end(1)
    assert budget.model.stop_training


def test_resolve_corpus_prefers_shared_then_download_then_builtin(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "tinyshakespeare").mkdir(parents=True)
    (shared / "tinyshakespeare" / "input.txt").write_text("First Citizen:\n")
    monkeypatch.setenv("KERASLLM_SHARED_DATA", str(shared))
    assert notebook.resolve_corpus("tinyshakespeare", log=lambda _: None) == str(shared / "tinyshakespeare/input.txt")

    monkeypatch.setenv("KERASLLM_SHARED_DATA", str(tmp_path / "nowhere"))
    local = tmp_path / "data" / "tinyshakespeare"
    local.mkdir(parents=True)
    (local / "input.txt").write_text("x")
    monkeypatch.setenv("KERASLLM_DATA_DIR", str(tmp_path / "data"))
    assert notebook.resolve_corpus("tinyshakespeare", log=lambda _: None) == str(local / "input.txt")

    import kerasllm.data.corpus as corpus

    def offline(name):
        raise DataError(f"dataset {name!r}: could not download")

    monkeypatch.setattr(corpus, "fetch_registered", offline)
    lines = []
    assert notebook.resolve_corpus("tinyshakespeare", log=lines.append) == "python-stdlib"
    assert "falling back" in lines[-1]
    with pytest.raises(DataError, match="not a registered dataset"):
        notebook.resolve_corpus("no-such-corpus", log=lambda _: None)


def test_shared_file_error_names_the_file_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASLLM_SHARED_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"chinese/xiyouji.txt: not found .*KERASLLM_SHARED_DATA"):
        notebook.shared_file("chinese/xiyouji.txt")
    assert notebook.shared_file("chinese/xiyouji.txt", required=False) is None


def test_run_directory_honours_kerasllm_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASLLM_RUNS", str(tmp_path))
    path = notebook.run_directory("01_quickstart")
    assert path == tmp_path / "01_quickstart" and path.is_dir()
    monkeypatch.delenv("KERASLLM_RUNS")
    assert notebook.run_directory("x").parts[-3:] == ("saved_models", "notebooks", "x")
    os.rmdir(notebook.run_directory("x"))
