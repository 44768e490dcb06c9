"""Evaluation metrics: classification reports from a confusion matrix, and LM loss over long texts."""

import math

import numpy as np

from kerasllm.errors import DataError


def confusion_matrix(y_true, y_pred, num_classes):
    """`(num_classes, num_classes)` counts; row = true class, column = predicted class.

    Examples:

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
    [[1, 0], [1, 1]]
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(matrix, labels=None):
    """Accuracy, per-class precision / recall / F1 / support, and their macro averages.

    A class never predicted has precision 0, a class with no examples recall 0 (and F1 0),
    as scikit-learn's `zero_division=0` does.

    Args:
        matrix: a confusion matrix from `confusion_matrix`.
        labels: class names (default: "0", "1", ...).

    Returns:
        A JSON-serializable dict: `accuracy`, `macro` (precision, recall, f1), `per_class`
        (name -> precision, recall, f1, support), `labels`, `confusion_matrix`, `examples`.

    Examples:

    >>> report = classification_report([[5, 1], [2, 2]], labels=["neg", "pos"])
    >>> report["accuracy"], round(report["per_class"]["pos"]["precision"], 3)
    (0.7, 0.667)
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    n = matrix.shape[0]
    labels = [str(label) for label in labels] if labels is not None else [str(i) for i in range(n)]
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(n), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(n), where=denominator > 0)
    total = int(matrix.sum())
    return {
        "examples": total,
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": labels,
        "confusion_matrix": matrix.tolist(),
    }


def format_report(report):
    """The report as an aligned text table plus the confusion matrix."""
    labels = report["labels"]
    width = max(9, *(len(label) for label in labels))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for label in labels:
        row = report["per_class"][label]
        lines.append(
            f"{label:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}"
        )
    macro = report["macro"]
    lines.append(
        f"{'macro':<{width}}  {macro['precision']:9.4f}  {macro['recall']:6.4f}  {macro['f1']:6.4f}  {report['examples']:7d}"
    )
    lines.append(f"accuracy {report['accuracy']:.4f} on {report['examples']} examples")
    lines.append("")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    cell = max(6, *(len(label) for label in labels), len(str(max(max(r) for r in report["confusion_matrix"]))))
    lines.append(" " * width + "  " + " ".join(f"{label:>{cell}}" for label in labels))
    for label, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"{label:<{width}}  " + " ".join(f"{count:>{cell}d}" for count in row))
    return "\n".join(lines)


def plot_confusion_matrix(matrix, labels, path, title="confusion matrix"):
    """Saves the confusion matrix as a PNG heat map with counts (matplotlib, Agg backend)."""
    # A bare Figure, not pyplot: no backend switch (matplotlib.use("Agg") breaks notebooks'
    # inline plots) and nothing left open.
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    size = 1.0 + 0.6 * len(labels)
    figure = Figure(figsize=(max(3.5, size + 1), max(3.0, size)))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def sliding_windows(num_tokens, block_size, stride):
    """`(start, first_scored)` pairs covering targets 1..num_tokens-1 once each.

    Window `[start, start + block_size]` predicts tokens `start+1 .. start+block_size`; all but
    the first window score only the targets after the previous window's end, so each token is
    predicted once, with at least `block_size - stride` tokens of context (Hugging Face's
    perplexity recipe).

    Examples:

    >>> sliding_windows(10, 4, 2)
    [(0, 0), (2, 2), (4, 2), (5, 3)]
    """
    if stride <= 0 or stride > block_size:
        raise DataError(f"stride = {stride}: expected 1 <= stride <= block_size = {block_size}")
    windows, scored_until, start = [], 0, 0  # scored_until: targets 1..scored_until are done
    last_start = max(num_tokens - 1 - block_size, 0)
    while scored_until < num_tokens - 1:
        start = min(start, last_start)
        end = min(start + block_size, num_tokens - 1)  # last target index
        windows.append((start, scored_until - start))
        scored_until = end
        start += stride
    return windows


def language_model_loss(model, ids, block_size, stride=None, batch_size=16):
    """Mean next-token cross-entropy (nats) over `ids` with a sliding window.

    Args:
        model: a language model mapping `(batch, time)` ids to `(batch, time, vocab)` logits.
        ids: 1-D token ids of the whole text.
        block_size: window length (the model's context).
        stride: window step; smaller means more context per token and more compute.
            Default `block_size // 2`.
        batch_size: windows per forward pass.

    Returns:
        `(mean_loss, scored_tokens)`.
    """
    import keras

    ids = np.asarray(ids, dtype=np.int32)
    if len(ids) < 2:
        raise DataError(f"the text has {len(ids)} tokens; at least 2 are needed to score a prediction")
    block = min(block_size, len(ids) - 1)
    stride = min(stride or max(block // 2, 1), block)
    windows = sliding_windows(len(ids), block, stride)
    total, count = 0.0, 0
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        x = np.stack([ids[s : s + block] for s, _ in chunk])
        y = np.stack([ids[s + 1 : s + block + 1] for s, _ in chunk])
        logits = model(x, training=False)
        nll = keras.ops.convert_to_numpy(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )  # (B, T)
        for row, (_, scored_from) in zip(nll, chunk):
            total += float(row[scored_from:].sum(dtype=np.float64))
            count += block - scored_from
    return total / count, count


def language_model_report(model, tokenizer, text, block_size, stride=None, batch_size=16):
    """Loss, perplexity, bits per token and bits per character of `text` under `model`."""
    ids = tokenizer.encode(text)
    loss, scored = language_model_loss(model, ids, block_size, stride=stride, batch_size=batch_size)
    characters_per_token = len(text) / len(ids)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700)),
        "bits_per_token": loss / math.log(2),
        "bits_per_char": loss / math.log(2) / characters_per_token,
        "tokens": int(len(ids)),
        "scored_tokens": int(scored),
        "characters": len(text),
        "block_size": int(min(block_size, len(ids) - 1)),
        "stride": int(min(stride or max(min(block_size, len(ids) - 1) // 2, 1), block_size)),
    }
