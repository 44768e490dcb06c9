"""Export a run directory as a SavedModel for TensorFlow Serving.

    python -m kerasllm.recipes.export --model RUN_DIR [--output saved_models/serving/NAME]
                                      [--version N] [--set export.key=value ...]

Writes `OUTPUT/N/` (N: the next free integer unless `--version` is given) atomically, with a
README.txt listing the signatures. A language-model run gets `generate`, `score` and
`next_token_logits`; a fine-tuned classifier run gets `classify`.
"""

import argparse
from pathlib import Path

from kerasllm.recipes.cli import run_cli


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m kerasllm.recipes.export",
        description="Write a run's model and tokenizer as a TF Serving SavedModel (string in, string out).",
    )
    parser.add_argument("--model", required=True, help="run directory (pretrain or finetune recipe)")
    parser.add_argument(
        "--output", default=None,
        help="model base path; versions go in OUTPUT/N (default saved_models/serving/<run name>)",
    )
    parser.add_argument("--version", type=int, default=None, help="version number (default: next free)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. export.truncate=error or export.max_new_tokens=64",
    )
    return parser


def build_server(run_dir, overrides=()):
    """The serving module for a run directory's model (language model or classifier)."""
    from kerasllm.export import ClassifierServer, LanguageModelServer
    from kerasllm.models import GPT, LSTMLanguageModel
    from kerasllm.models.classifier import SequenceClassifier
    from kerasllm.errors import RunError
    from kerasllm.training import load_run

    config, tokenizer, model = load_run(run_dir)
    for assignment in overrides:
        config.override(assignment)
    if isinstance(model, SequenceClassifier):
        max_length = config.finetune.max_length or config.model.block_size
        return ClassifierServer(model, tokenizer, max_length=max_length)
    if isinstance(model, (GPT, LSTMLanguageModel)):
        return LanguageModelServer(
            model, tokenizer, max_new_tokens=config.export.max_new_tokens, truncate=config.export.truncate,
            score_stride=config.export.score_stride,
        )
    raise RunError(f"{run_dir}: cannot export a {type(model).__name__}; expected a language model or classifier")


def main(argv=None):
    args = build_parser().parse_args(argv)
    from kerasllm.errors import ConfigError, RunError
    from kerasllm.export import export_versioned

    run_dir = Path(args.model)
    if not run_dir.is_dir():
        raise RunError(f"--model {run_dir}: no such run directory")
    if args.version is not None and args.version < 1:
        raise ConfigError(f"--version {args.version}: expected a positive integer")
    output = Path(args.output) if args.output else Path("saved_models") / "serving" / run_dir.resolve().name
    if output.resolve() == run_dir.resolve():
        raise ConfigError(f"--output {output}: must differ from the run directory")
    server = build_server(run_dir, args.set)
    final = export_versioned(server, output, args.version)
    print(f"signatures: {', '.join(server.signatures())}; inputs and outputs in {final / 'README.txt'}")


if __name__ == "__main__":
    run_cli(main)
