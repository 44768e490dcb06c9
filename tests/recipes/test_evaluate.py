"""Evaluation: classification metrics by hand, sliding-window LM loss, and the evaluate recipe."""

import json

import keras
import numpy as np
import pytest

from conftest import run_module
from kerasllm.errors import DataError
from kerasllm.models import GPT
from kerasllm.training.metrics import (
    classification_report,
    confusion_matrix,
    format_report,
    language_model_loss,
    plot_confusion_matrix,
    sliding_windows,
)

# rows: true class, columns: predicted class
MATRIX = np.array([[5, 2, 1], [1, 6, 1], [0, 3, 1]])


def test_confusion_matrix_counts_pairs():
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 2]
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 3), [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_report_matches_hand_computation():
    report = classification_report(MATRIX, labels=["neg", "neu", "pos"])
    assert report["examples"] == 20
    assert report["accuracy"] == pytest.approx(12 / 20)
    # precision = diagonal / column sum, recall = diagonal / row sum
    expected = {
        "neg": (5 / 6, 5 / 8),
        "neu": (6 / 11, 6 / 8),
        "pos": (1 / 3, 1 / 4),
    }
    f1s = []
    for label, (precision, recall) in expected.items():
        row = report["per_class"][label]
        f1 = 2 * precision * recall / (precision + recall)
        f1s.append(f1)
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
    assert report["per_class"]["pos"]["support"] == 4
    assert report["macro"]["f1"] == pytest.approx(sum(f1s) / 3)
    assert report["macro"]["precision"] == pytest.approx((5 / 6 + 6 / 11 + 1 / 3) / 3)
    text = format_report(report)
    assert "accuracy 0.6000 on 20 examples" in text and "neu" in text


def test_a_class_never_predicted_scores_zero_not_nan():
    report = classification_report([[3, 0], [2, 0]])
    assert report["per_class"]["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert report["accuracy"] == pytest.approx(0.6)


def test_confusion_matrix_png(tmp_path):
    path = plot_confusion_matrix(MATRIX, ["neg", "neu", "pos"], tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("n,block,stride", [(10, 4, 2), (50, 8, 8), (50, 8, 3), (9, 8, 1), (3, 8, 4)])
def test_sliding_windows_score_every_target_once(n, block, stride):
    block = min(block, n - 1)
    stride = min(stride, block)
    scored = []
    for start, first in sliding_windows(n, block, stride):
        assert 0 <= start and start + block <= n - 1
        scored += [start + 1 + t for t in range(first, block)]
    assert scored == list(range(1, n))
    with pytest.raises(DataError, match="stride"):
        sliding_windows(n, block, block + 1)


def test_language_model_loss_equals_a_direct_computation():
    keras.utils.set_random_seed(0)
    model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)
    ids = np.random.default_rng(0).integers(0, 11, size=40)
    # Non-overlapping windows (stride = block): the loss is the plain mean over those windows.
    loss, count = language_model_loss(model, ids, 8, stride=8)
    direct = []
    for start, first in sliding_windows(40, 8, 8):
        logits = np.array(model(ids[None, start : start + 8]))[0]
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        targets = ids[start + 1 : start + 9]
        direct += [-log_probs[t, targets[t]] for t in range(first, 8)]
    assert count == 39 and loss == pytest.approx(np.mean(direct), rel=1e-5)
    strided, count = language_model_loss(model, ids, 8, stride=2, batch_size=3)
    assert count == 39 and abs(strided - loss) < 0.5  # more context per token, same text
    with pytest.raises(DataError, match="at least 2"):
        language_model_loss(model, ids[:1], 8)


@pytest.mark.slow
def test_evaluate_recipe_on_lm_and_classifier_runs(tmp_path):
    from kerasllm.config import Config, load_config
    from kerasllm.training import pretrain
    from kerasllm.training.finetune import finetune

    text = "the cat sat on the mat. the dog ate the hat. " * 40
    (tmp_path / "corpus.txt").write_text(text)
    (tmp_path / "held_out.txt").write_text("the dog sat on the hat. " * 20)
    config = load_config("default", [
        f"data.dataset=\"{tmp_path / 'corpus.txt'}\"", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
        "model.block_size=16", "train.batch_size=4", "train.max_steps=2", "train.eval_interval=2",
        "train.eval_steps=1", "train.warmup_steps=1", "train.jit_compile=false",
    ])
    pretrain(config, tmp_path / "lm", verbose=0)
    result = run_module("kerasllm.recipes.evaluate", "--model", tmp_path / "lm", "--data",
                        tmp_path / "held_out.txt", "--json", "--stride", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["perplexity"] == pytest.approx(np.exp(report["loss"]), rel=1e-6)
    assert report["bits_per_char"] == pytest.approx(report["bits_per_token"])  # char tokenizer
    assert report["stride"] == 4 and report["scored_tokens"] == report["tokens"] - 1
    (tmp_path / "empty.txt").write_text("")
    empty = run_module("kerasllm.recipes.evaluate", "--model", tmp_path / "lm", "--data", tmp_path / "empty.txt")
    assert empty.returncode == 2 and f"{tmp_path / 'empty.txt'}: has fewer than 2 tokens" in empty.stderr
    assert "Traceback" not in empty.stderr

    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "the cat\tpos\nthe hat\tneg\n" * 10)
    ft = Config(name="t")
    for item in [f"data.dataset=\"{tmp_path / 'train.tsv'}\"", "train.batch_size=4", "train.max_steps=2",
                 "train.eval_interval=2", "train.warmup_steps=1", "train.jit_compile=false"]:
        ft.override(item)
    finetune(ft, tmp_path / "lm", tmp_path / "clf", verbose=0)
    result = run_module("kerasllm.recipes.evaluate", "--model", tmp_path / "clf", "--data", tmp_path / "train.tsv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "macro" in result.stdout and "confusion matrix" in result.stdout
    assert (tmp_path / "clf" / "eval" / "train_confusion.png").is_file()
    unwritable = run_module("kerasllm.recipes.evaluate", "--model", tmp_path / "clf", "--data", tmp_path / "train.tsv",
                            "--plot", "/proc/kerasllm/confusion.png")
    assert unwritable.returncode == 0 and "macro" in unwritable.stdout  # the report first, then what failed
    assert "confusion matrix not saved: /proc/kerasllm/confusion.png" in unwritable.stdout

    (tmp_path / "other.tsv").write_text("sentence\tlabel\nthe cat\tmaybe\n")
    result = run_module("kerasllm.recipes.evaluate", "--model", tmp_path / "clf", "--data", tmp_path / "other.tsv")
    assert result.returncode == 2 and "'maybe' are not among the model's labels" in result.stderr
    assert "Traceback" not in result.stderr
