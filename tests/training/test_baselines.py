"""Baselines: majority class and naive Bayes on sets whose answer is known, and the baseline
fields of evaluate's JSON."""

import json

import numpy as np
import pytest

from kerasllm.training.baselines import NaiveBayes, baseline_reports, compare, features, is_cjk, verdict
from kerasllm.training.metrics import classification_report, confusion_matrix


def keyword_set(n, seed, share=0.7):
    """Texts where one keyword decides the label; about `share` of them are class 1."""
    rng = np.random.default_rng(seed)
    filler = ["the", "film", "plot", "actors", "a", "was", "of", "and", "story"]
    y = (rng.random(n) < share).astype(int)
    texts = [
        " ".join([*rng.choice(filler, 4), "brilliant" if label else "tedious", *rng.choice(filler, 3)])
        for label in y
    ]
    return texts, y


def test_naive_bayes_is_perfect_and_majority_is_the_class_share():
    train_texts, train_y = keyword_set(200, seed=0)
    test_texts, test_y = keyword_set(100, seed=1)
    reports = baseline_reports(train_texts, train_y, test_texts, test_y, ["neg", "pos"])
    assert reports["features"] == "words"
    nb = reports["naive_bayes"]
    assert nb["accuracy"] == 1.0 and nb["macro_f1"] == 1.0
    assert nb["per_class"]["neg"] == {"precision": 1.0, "recall": 1.0}
    majority = reports["majority"]  # always "pos", the larger training class
    assert majority["accuracy"] == pytest.approx(test_y.mean())
    assert majority["per_class"]["pos"] == {"precision": pytest.approx(test_y.mean()), "recall": 1.0}
    assert majority["per_class"]["neg"] == {"precision": 0.0, "recall": 0.0}
    assert majority["macro_f1"] == pytest.approx((2 * test_y.mean() / (1 + test_y.mean())) / 2)


def test_chinese_text_is_counted_in_character_bigrams():
    good, bad = "服务很好房间干净", "房间很脏服务太差"
    assert is_cjk([good, bad]) and not is_cjk(["a clean room"])
    assert features("很好 吃", cjk=True) == ["很好", "好吃"]
    nb = NaiveBayes().fit([good, bad] * 5, [1, 0] * 5, num_classes=2)
    assert nb.cjk and nb.predict(["很好", "太差了"]).tolist() == [1, 0]


def test_comparison_and_verdict():
    test_texts, test_y = keyword_set(50, seed=2)
    wrong = classification_report(confusion_matrix(test_y, 1 - test_y, 2), ["neg", "pos"])
    comparison = compare(wrong, *keyword_set(100, seed=3), test_texts, test_y)
    assert comparison["model"]["accuracy"] == 0.0
    assert comparison["verdict"].startswith("model is 100.0 points below the bag-of-words baseline")
    assert verdict(0.9, {"naive_bayes": {"accuracy": 0.85}, "features": "words"}).startswith("model is 5.0 points above")
    assert verdict(0.85, {"naive_bayes": {"accuracy": 0.85}, "features": "words"}).startswith("model is level with")


@pytest.mark.slow  # a fine-tuning run, then evaluate: ~13 s
def test_evaluate_json_has_the_baseline_fields(tmp_path, capsys):
    from test_finetune import write_keyword_set, write_untrained_run

    from kerasllm.config import Config
    from kerasllm.recipes.evaluate import main
    from kerasllm.training.finetune import finetune

    write_untrained_run(tmp_path / "lm")
    write_keyword_set(tmp_path / "train.tsv", 64)
    write_keyword_set(tmp_path / "test.tsv", 20, seed=5)
    config = Config(name="t")
    for item in [f"data.dataset=\"{tmp_path / 'train.tsv'}\"", "train.batch_size=16", "train.max_steps=2",
                 "train.eval_interval=2", "train.warmup_steps=1", "train.jit_compile=false"]:
        config.override(item)
    finetune(config, tmp_path / "lm", tmp_path / "clf", log=lambda _: None, verbose=0)
    capsys.readouterr()
    main(["--model", str(tmp_path / "clf"), "--data", str(tmp_path / "test.tsv"), "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    baselines = report["baselines"]
    assert baselines["train_examples"] == 64 - 6  # the training file minus the held-out validation rows
    assert baselines["naive_bayes"]["accuracy"] == 1.0 and baselines["features"] == "words"
    assert set(baselines["majority"]["per_class"]["0"]) == {"precision", "recall"}
    assert "bag-of-words baseline" in report["verdict"]
    main(["--model", str(tmp_path / "clf"), "--data", str(tmp_path / "test.tsv")])
    text = capsys.readouterr().out
    assert "naive Bayes (words)" in text and "majority class" in text and "bag-of-words baseline" in text
