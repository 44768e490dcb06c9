"""Evaluate a run on a held-out file: a language model or a classifier.

    python -m kerasllm.recipes.evaluate --model RUN_DIR --data FILE [--json]
        [--stride N] [--text-column C] [--label-column L] [--plot PNG]

Language models: loss, perplexity, bits per token and per character of a text file with the
run's own tokenizer, scored with a sliding window (`--stride`, default half the context).
Classifiers: accuracy, precision / recall / F1 per class and macro, and the confusion matrix
(printed and saved as a PNG), beside the same metrics for two baselines trained on the run's own
training examples: the majority class and a bag-of-words naive Bayes, with a one-line verdict.
"""

import argparse
import json
from pathlib import Path

from kerasllm.errors import ConfigError, DataError
from kerasllm.recipes.cli import run_cli


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m kerasllm.recipes.evaluate",
        description="Score a language model or a classifier run on a held-out file.",
    )
    parser.add_argument("--model", required=True, help="run directory (pretrained or fine-tuned)")
    parser.add_argument("--data", required=True, help="text file (language model) or TSV/CSV/JSONL (classifier)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--stride", type=int, default=0, help="LM sliding-window step in tokens; 0: half the context")
    parser.add_argument("--batch-size", type=int, default=16, help="windows or examples per forward pass")
    parser.add_argument("--text-column", default=None, help="classifier text column (default: the run's, else auto)")
    parser.add_argument("--label-column", default=None, help="classifier label column (default: the run's, else auto)")
    parser.add_argument("--plot", default=None, help="confusion-matrix PNG path (default: RUN_DIR/eval/<data>_confusion.png)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.stride < 0 or args.batch_size <= 0:
        raise ConfigError("--stride must be >= 0 and --batch-size > 0")

    from kerasllm.data.corpus import read_text_file
    from kerasllm.models.classifier import SequenceClassifier
    from kerasllm.training.metrics import language_model_report
    from kerasllm.training.rundir import load_run

    config, tokenizer, model = load_run(args.model)
    if isinstance(model, SequenceClassifier):
        report, text = _classifier_report(args, config, tokenizer, model)
    else:
        stride = args.stride or None
        block = config.model.block_size
        if stride and stride > block:
            raise ConfigError(f"--stride {stride}: expected at most the context length {block}")
        text = read_text_file(args.data)
        if len(tokenizer.encode(text[:4096])) < 2:
            raise DataError(f"{args.data}: has fewer than 2 tokens; expected text to score")
        report = language_model_report(model, tokenizer, text, block, stride=stride, batch_size=args.batch_size)
        text = (
            f"loss {report['loss']:.4f} nats/token, perplexity {report['perplexity']:.2f}, "
            f"{report['bits_per_token']:.4f} bits/token, {report['bits_per_char']:.4f} bits/char\n"
            f"{report['scored_tokens']:,} tokens scored ({report['characters']:,} characters), "
            f"window {report['block_size']}, stride {report['stride']}"
        )
    report = {"model": str(args.model), "data": str(args.data), **report}
    print(json.dumps(report, ensure_ascii=False) if args.json else text)


def _classifier_report(args, config, tokenizer, model):
    """The classifier's report on `--data` beside the baselines, and its text form."""
    from kerasllm.data.labels import label_ids
    from kerasllm.data.readers import read_labelled
    from kerasllm.training.baselines import compare, format_comparison
    from kerasllm.training.finetune import evaluate_classifier
    from kerasllm.training.metrics import format_report, plot_confusion_matrix
    from kerasllm.training.rundir import RunDir

    texts, labels = read_labelled(
        args.data,
        text_column=args.text_column or config.finetune.text_column or None,
        label_column=args.label_column or config.finetune.label_column or None,
    )
    max_length = config.finetune.max_length or config.model.block_size
    report = evaluate_classifier(model, tokenizer, texts, labels, max_length, source=str(args.data))
    plot = Path(args.plot) if args.plot else RunDir(args.model).eval_dir / f"{Path(args.data).stem}_confusion.png"
    try:  # a read-only run still gets its report: say what could not be written
        plot.parent.mkdir(parents=True, exist_ok=True)
        report["confusion_png"] = str(plot_confusion_matrix(
            report["confusion_matrix"], report["labels"], plot, title=f"{Path(args.model).name} on {Path(args.data).name}"
        ))
        saved = f"confusion matrix saved to {plot}"
    except OSError as error:
        report["confusion_png"] = None
        saved = f"confusion matrix not saved: {plot}: {error.strerror or error}"
    text = format_report(report) + "\n" + saved
    train = _training_examples(config)
    if train is None:
        report["baselines"] = None
        return report, text + f"\nbaselines: not computed (the training file {config.data.dataset} is not here)"
    train_texts, train_labels = train
    comparison = compare(
        report, train_texts, label_ids(train_labels, model.labels, str(config.data.dataset)),
        texts, label_ids(labels, model.labels, str(args.data)),
    )
    report["baselines"] = {
        "majority": comparison["majority"], "naive_bayes": comparison["naive_bayes"],
        "features": comparison["features"], "train_data": str(config.data.dataset), "train_examples": len(train_texts),
    }
    report["verdict"] = comparison["verdict"]
    return report, text + "\n\n" + format_comparison(comparison, title=f"{Path(args.data).name} ({len(texts):,})")


def _training_examples(config):
    """`(texts, labels)` the classifier was trained on (its training file minus the held-out
    validation rows), or None when that file is not at its recorded path."""
    from kerasllm.training.finetune.classify import training_split

    if not Path(config.data.dataset).is_file():
        return None
    texts, labels, _, _ = training_split(config)
    return texts, labels


if __name__ == "__main__":
    run_cli(main)
