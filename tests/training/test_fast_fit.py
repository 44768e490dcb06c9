"""Training-speed options (issue 21) change how fast a run goes, never what it computes."""

import csv
import math

import keras
import numpy as np
import pytest
from conftest import shared_data_dir
from test_training import text_file  # noqa: F401 (the same tiny word corpus fixture)

from kerasllm.config import Config, ModelConfig, TrainConfig, load_config
from kerasllm.training.run import pretrain

SHARED = shared_data_dir() / "wikitext-2"


def run(tmp_path, text_file, name, **train):
    config = Config()
    config.model = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.1)
    config.data.dataset = str(text_file)
    config.train = TrainConfig(batch_size=4, max_steps=12, eval_interval=6, checkpoint_every=3, eval_steps=2,
                               warmup_steps=1, jit_compile=False, learning_rate=3e-3, **train)
    model, _, metrics = pretrain(config, tmp_path / name, log=lambda *_: None, verbose=0)
    with open(tmp_path / name / "log.csv", newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in ("time", "tokens_per_second", "model_flops_per_second", "mfu")}
                for r in csv.DictReader(f)]
    checkpoints = sorted(p.name for p in (tmp_path / name / "checkpoints").glob("ckpt-*.keras"))
    return model, metrics, rows, checkpoints


@pytest.mark.slow  # ~25 s on a busy 2-core host: two runs
def test_steps_per_execution_gives_the_same_run(tmp_path, text_file):
    single, metrics_1, rows_1, ckpts_1 = run(tmp_path, text_file, "single")
    # 6 does not divide checkpoint_every = 3: the plan runs 3 steps per compiled call.
    multi, metrics_k, rows_k, ckpts_k = run(tmp_path, text_file, "multi", steps_per_execution=6)
    assert multi.steps_per_execution == 3
    assert [r["step"] for r in rows_k] == [r["step"] for r in rows_1] == ["3", "6", "9", "12"]
    for a, b in zip(rows_1, rows_k):
        for key in ("loss", "val_loss", "learning_rate", "grad_norm"):
            assert (a[key] == b[key] == "") or math.isclose(float(a[key]), float(b[key]), rel_tol=1e-5), (key, a, b)
    assert ckpts_k == ckpts_1 and metrics_k["steps"] == metrics_1["steps"] == 12
    for w1, wk in zip(single.get_weights(), multi.get_weights()):
        np.testing.assert_allclose(w1, wk, atol=1e-6)


def test_wikitext2_word_lstm_recipe_is_word_language_models_defaults():
    config = load_config("wikitext2_word_lstm")
    model, train, data = config.model, config.train, config.data
    assert (model.arch, model.n_layer, model.n_embd, model.hidden_size, model.dropout, model.tie_embeddings,
            model.block_size) == ("lstm", 2, 200, 200, 0.2, False, 35)
    assert (train.batch_size, train.optimizer, train.momentum, train.learning_rate, train.grad_clip,
            train.schedule, train.plateau_factor, train.plateau_patience, train.warmup_steps,
            train.weight_decay) == (20, "sgd", 0.0, 20.0, 0.25, "plateau", 0.25, 1, 0, 0.0)
    assert train.max_steps == 40 * train.eval_interval  # 40 epochs, validation after each
    assert data.tokenizer == "word" and data.split == "position"


@pytest.mark.slow  # the first time: the word tokenizer and the token store of WikiText-2 (~2 min)
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/wikitext-2")
def test_wikitext2_word_lstm_validates_on_exactly_valid_txt():
    from kerasllm.training.run import prepare_data

    config = load_config("wikitext2_word_lstm", [f"data.dataset={SHARED / '[tv][ra]*.txt'}"])
    data = prepare_data(config, log=lambda *_: None)
    valid = data.tokenizer.encode((SHARED / "valid.txt").read_text(encoding="utf-8"))
    np.testing.assert_array_equal(np.asarray(data.val_ids), [*valid, data.tokenizer.eos_id])
    assert len(data.train_ids) // config.model.block_size // config.train.batch_size == config.train.eval_interval


@pytest.mark.slow  # ~30 s on a busy 2-core host (the word tokenizer and the LSTM's graph)
def test_wikitext2_word_lstm_trains(tmp_path, text_file):
    """The recipe's model, optimizer and plateau schedule run end to end (on a tiny corpus)."""
    config = load_config("wikitext2_word_lstm", [
        f"data.dataset={text_file}", "data.val_fraction=0.1", "train.max_steps=4", "train.eval_interval=2",
        "train.eval_steps=2", "model.n_embd=8", "model.hidden_size=8", "train.batch_size=4", "model.block_size=8"])
    keras.utils.set_random_seed(0)
    model, _, metrics = pretrain(config, tmp_path / "lstm", log=lambda *_: None, verbose=0)
    assert metrics["steps"] == 4 and math.isfinite(metrics["val_loss"])
    assert type(model.optimizer).__name__ == "SGD" and model.head is not None  # untied, as pytorch's
