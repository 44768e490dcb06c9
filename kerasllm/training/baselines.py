"""Baselines beside every classifier score: the majority class and multinomial naive Bayes.

A fine-tuned classifier is only worth its cost when it beats what a few lines of counting get on
the same files. `compare` trains both baselines on the training examples, scores them on a
held-out set with the same metrics as the model, and says in one line where the model stands:

* majority: always the most frequent training label (its accuracy is that label's share);
* naive Bayes: multinomial, add-one smoothing, on a bag of lower-cased words for space-separated
  text, or of character bigrams for Chinese/Japanese text (which has no spaces between words).

Pure Python and numpy: seconds on SST-2's 67k sentences.

Examples:

>>> texts = ["a good film", "a bad film", "good fun", "bad acting"]
>>> nb = NaiveBayes().fit(texts, [1, 0, 1, 0], num_classes=2)
>>> nb.predict(["good", "so bad"]).tolist()
[1, 0]
"""

import re
from collections import Counter

import numpy as np

from kerasllm.training.metrics import classification_report, confusion_matrix

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"\w+")


def is_cjk(texts, sample=2000):
    """True when most non-space characters of `texts` are Chinese/Japanese characters.

    Examples:

    >>> is_cjk(["酒店很好，服务周到"]), is_cjk(["a fine hotel"])
    (True, False)
    """
    chars = "".join(texts[:sample]).replace(" ", "")
    return bool(chars) and len(_CJK.findall(chars)) > 0.3 * len(chars)


def features(text, cjk):
    """The bag the baseline counts: lower-cased words, or character bigrams (`cjk`).

    Examples:

    >>> features("Not GOOD, not bad", cjk=False)
    ['not', 'good', 'not', 'bad']
    >>> features("很好 吃", cjk=True)
    ['很好', '好吃']
    """
    if not cjk:
        return _WORD.findall(text.lower())
    chars = "".join(text.split())
    return [chars[i : i + 2] for i in range(len(chars) - 1)] or ([chars] if chars else [])


class NaiveBayes:
    """Multinomial naive Bayes over `features` with add-`alpha` smoothing.

    Args:
        alpha: the pseudo-count added to every (class, feature) count.
        cjk: character bigrams instead of words; None: decided from the training texts.
    """

    def __init__(self, alpha=1.0, cjk=None):
        self.alpha = alpha
        self.cjk = cjk

    def fit(self, texts, y, num_classes):
        if self.cjk is None:
            self.cjk = is_cjk(list(texts))
        counts = [Counter() for _ in range(num_classes)]
        for text, label in zip(texts, y):
            counts[int(label)].update(features(text, self.cjk))
        self.vocabulary = {f: i for i, f in enumerate(sorted(set().union(*counts)))}
        table = np.zeros((num_classes, len(self.vocabulary)))  # (K, V)
        for k, counter in enumerate(counts):
            for feature, count in counter.items():
                table[k, self.vocabulary[feature]] = count
        smoothed = table + self.alpha
        self.log_likelihood = np.log(smoothed / smoothed.sum(axis=1, keepdims=True))  # (K, V)
        prior = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes) + 1.0
        self.log_prior = np.log(prior / prior.sum())  # (K,)
        return self

    def predict(self, texts):
        scores = np.tile(self.log_prior, (len(texts), 1))  # (N, K)
        for row, text in enumerate(texts):
            ids = [self.vocabulary[f] for f in features(text, self.cjk) if f in self.vocabulary]
            if ids:
                scores[row] += self.log_likelihood[:, ids].sum(axis=1)
        return np.argmax(scores, axis=1)


def majority_class(y, num_classes):
    """The most frequent class index of `y` (the lowest index on a tie)."""
    return int(np.argmax(np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)))


def summary(report):
    """The comparable part of a `classification_report`: accuracy, macro-F1, per-class P/R."""
    return {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro"]["f1"],
        "per_class": {
            label: {"precision": row["precision"], "recall": row["recall"]}
            for label, row in report["per_class"].items()
        },
    }


def baseline_reports(train_texts, train_y, test_texts, test_y, labels):
    """Both baselines trained on `(train_texts, train_y)` and scored on the test set.

    Returns:
        `{"majority": summary, "naive_bayes": summary, "features": "words" | "character bigrams"}`.
    """
    k = len(labels)
    nb = NaiveBayes().fit(train_texts, train_y, k)
    majority = np.full(len(test_y), majority_class(train_y, k))
    return {
        "majority": summary(classification_report(confusion_matrix(test_y, majority, k), labels)),
        "naive_bayes": summary(classification_report(confusion_matrix(test_y, nb.predict(test_texts), k), labels)),
        "features": "character bigrams" if nb.cjk else "words",
    }


def verdict(model_accuracy, baselines):
    """One line: how many accuracy points the model is above or below naive Bayes.

    Examples:

    >>> verdict(0.725, {"naive_bayes": {"accuracy": 0.818}, "features": "words"})
    'model is 9.3 points below the bag-of-words baseline (naive Bayes on words: 81.8%)'
    """
    nb = baselines["naive_bayes"]["accuracy"]
    points = 100 * (model_accuracy - nb)
    where = "level with" if abs(points) < 0.05 else f"{abs(points):.1f} points {'above' if points > 0 else 'below'}"
    return f"model is {where} the bag-of-words baseline (naive Bayes on {baselines['features']}: {100 * nb:.1f}%)"



def compare(model_report, train_texts, train_y, test_texts, test_y):
    """The model's summary beside both baselines, plus the verdict (JSON-serializable)."""
    baselines = baseline_reports(train_texts, train_y, test_texts, test_y, model_report["labels"])
    return {
        "model": summary(model_report),
        **baselines,
        "verdict": verdict(model_report["accuracy"], baselines),
    }


def format_comparison(comparison, title="test"):
    """The comparison as a text table: accuracy, macro-F1 and per-class P/R for each scorer."""
    labels = list(comparison["model"]["per_class"])
    head = f"{title:<24} {'accuracy':>8} {'macro-F1':>8}" + "".join(f"  {'P/R ' + l:>15}" for l in labels)
    lines = [head]
    names = {"model": "model", "majority": "majority class", "naive_bayes": f"naive Bayes ({comparison['features']})"}
    for key, name in names.items():
        row = comparison[key]
        cells = "".join(
            f"  {row['per_class'][l]['precision']:>7.3f}/{row['per_class'][l]['recall']:<7.3f}" for l in labels
        )
        lines.append(f"{name:<24} {row['accuracy']:>8.4f} {row['macro_f1']:>8.4f}{cells}".rstrip())
    lines.append(comparison["verdict"])
    return "\n".join(lines)
