"""Export a run directory (or a pretrained checkpoint) as a SavedModel for TensorFlow Serving,
or as a Hugging Face checkpoint / keras-hub preset.

    python -m kerasllm.recipes.export --model RUN_DIR [--output saved_models/serving/NAME]
                                      [--version N] [--set export.key=value ...]
    python -m kerasllm.recipes.export --model RUN_DIR --format hf|keras-hub [--output DIR]

SavedModel (the default): writes `OUTPUT/N/` (N: the next free integer unless `--version` is
given) atomically, with a README.txt listing the signatures. A language-model run gets
`generate`, `score` and `next_token_logits`; a fine-tuned classifier run gets `classify`.

`--format hf` writes config.json, model.safetensors, tokenizer files and generation_config.json
(gpt2, llama, qwen2 or qwen3, whichever expresses the model); `--format keras-hub` a preset
that `keras_hub.models.Backbone.from_preset` loads. `--model` also takes a Hugging Face folder,
a keras-hub preset, `hf://ORG/NAME` or a preset name (see kerasllm.checkpoints).
"""

import argparse
from pathlib import Path

from kerasllm.recipes.cli import run_cli


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m kerasllm.recipes.export",
        description="Write a run's model and tokenizer as a TF Serving SavedModel (string in, string out).",
    )
    parser.add_argument(
        "--model", required=True,
        help="run directory (pretrain or finetune recipe), Hugging Face / keras-hub folder, hf://ORG/NAME or preset name",
    )
    parser.add_argument(
        "--format", default="savedmodel", choices=["savedmodel", "hf", "keras-hub"],
        help="savedmodel (TF Serving, default), hf (Hugging Face checkpoint folder) or keras-hub (preset folder)",
    )
    parser.add_argument(
        "--output", default=None,
        help="savedmodel: base path, versions go in OUTPUT/N (default saved_models/serving/<run name>); "
        "hf / keras-hub: the folder (default saved_models/<format>/<run name>)",
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
    config, tokenizer, model = load_source(run_dir)
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


def load_source(source):
    """`(config, tokenizer, model)` of a run directory or a pretrained checkpoint source."""
    from kerasllm.training import load_run

    return load_run(source)


def export_checkpoint(source, output, fmt, overrides=()):
    """Writes the model of `source` as a Hugging Face folder (`fmt="hf"`) or keras-hub preset."""
    from kerasllm.checkpoints.writer import save_hf, save_keras_hub
    from kerasllm.errors import ConfigError

    config, tokenizer, model = load_source(source)
    for assignment in overrides:
        config.override(assignment)
    if Path(output).exists() and any(Path(output).iterdir()):
        raise ConfigError(f"--output {output}: exists and is not empty")
    if fmt == "hf":
        return save_hf(model, tokenizer, output)
    return save_keras_hub(model, tokenizer, output)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from kerasllm.checkpoints import is_pretrained_source
    from kerasllm.errors import ConfigError, RunError
    from kerasllm.export import export_versioned

    run_dir = Path(args.model)
    if not run_dir.is_dir() and not is_pretrained_source(args.model):
        raise RunError(f"--model {run_dir}: no such run directory")
    if args.format != "savedmodel":
        output = Path(args.output) if args.output else Path("saved_models") / args.format / run_dir.resolve().name
        final = export_checkpoint(args.model, output, args.format, args.set)
        print(f"wrote a {args.format} checkpoint to {final}")
        return
    if args.version is not None and args.version < 1:
        raise ConfigError(f"--version {args.version}: expected a positive integer")
    output = Path(args.output) if args.output else Path("saved_models") / "serving" / run_dir.resolve().name
    if output.resolve() == run_dir.resolve():
        raise ConfigError(f"--output {output}: must differ from the run directory")
    server = build_server(args.model, args.set)
    final = export_versioned(server, output, args.version)
    print(f"signatures: {', '.join(server.signatures())}; inputs and outputs in {final / 'README.txt'}")


if __name__ == "__main__":
    run_cli(main)
