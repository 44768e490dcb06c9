"""Fine-tune a pretrained run: a classifier, or prompt -> response (SFT).

    python -m kerasllm.recipes.finetune --from RUN_DIR --data FILE [--task classify|sft]
        [--text-column C] [--label-column L] [--val FILE] [--test FILE]
        [--recipe NAME_OR_PATH] [--output DIR] [--overwrite] [--set key=value ...]

The model architecture comes from the pretrained run; the recipe (optional) supplies the
`[train]` and `[finetune]` settings, e.g. `recipes/sst2_finetune.toml`. The output is a new run
directory: never the `--from` run, and a directory holding another kind of run (a pretrained
one, say) only with `--overwrite`.
"""

import argparse
from pathlib import Path

from kerasllm.config import Config, describe_keys, load_config
from kerasllm.errors import ConfigError, RunError
from kerasllm.recipes.cli import run_cli


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m kerasllm.recipes.finetune",
        description="Fine-tune a pretrained GPT or LSTM run into a classifier or a prompt->response model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys for --set:\n" + describe_keys(),
    )
    parser.add_argument("--from", dest="from_run", default=None,
                        help="the pretrained run directory or checkpoint: a Hugging Face or keras-hub folder, "
                        "hf://ORG/NAME or a keras-hub preset name (required)")
    parser.add_argument("--data", default=None, help="training file: TSV/CSV/JSONL (classify) or JSONL (sft); "
                        "overrides data.dataset")
    parser.add_argument("--task", choices=["classify", "sft"], default=None, help="overrides finetune.task")
    parser.add_argument("--text-column", default=None, help="text column / JSONL field (finetune.text_column)")
    parser.add_argument("--label-column", default=None, help="label column / JSONL field (finetune.label_column)")
    parser.add_argument("--val", default=None, help="validation file (finetune.val_data)")
    parser.add_argument("--test", default=None, help="test file scored at the end (finetune.test_data)")
    parser.add_argument("--recipe", default=None, help="a fine-tuning recipe TOML file or name in recipes/")
    parser.add_argument("--output", default=None, help="run directory (default: saved_models/<recipe name>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what --output holds (another kind of run, or files that are no run)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set finetune.freeze_blocks=2 (repeatable)",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    overrides = []
    for flag, key in (("data", "data.dataset"), ("task", "finetune.task"), ("text_column", "finetune.text_column"),
                      ("label_column", "finetune.label_column"), ("val", "finetune.val_data"),
                      ("test", "finetune.test_data")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={_toml_string(getattr(args, flag))}")
    overrides += args.overrides
    if args.recipe:
        config = load_config(args.recipe, overrides)
    else:
        config = Config(name="finetune")
        for assignment in overrides:
            config.override(assignment)
    if not args.from_run:
        raise ConfigError("--from RUN_DIR is required: the pretrained run to start from")
    from kerasllm.checkpoints import is_pretrained_source

    if not Path(args.from_run).is_dir() and not is_pretrained_source(args.from_run):
        raise RunError(f"--from {args.from_run}: no such run directory, hf://ORG/NAME or keras-hub preset name")
    if config.data.dataset == Config().data.dataset:
        raise ConfigError("--data FILE is required (or data.dataset in the recipe): the fine-tuning examples")
    output = Path(args.output) if args.output else Path("saved_models") / config.name

    from kerasllm.training.finetune import finetune  # heavy imports after argument checks
    from kerasllm.training.finetune.common import KINDS, refuse_source_as_output
    from kerasllm.training.rundir import RunDir

    refuse_source_as_output(args.from_run, output)
    if args.overwrite:
        with RunDir(output) as run:
            run.claim(KINDS[config.finetune.task], overwrite=True, what="finetune")

    print(f"kerasllm: fine-tune {args.from_run} ({config.finetune.task}) on {config.data.dataset} -> {output}")
    _, _, metrics = finetune(config, args.from_run, output)
    summary = ", ".join(
        f"{key} {metrics[key]:.4f}" for key in ("val_accuracy", "test_accuracy", "val_macro_f1", "val_loss")
        if metrics.get(key) is not None
    )
    print(
        f"\n{summary} (kept: step {metrics['selected_step']} of {metrics['steps']}, by {metrics['select']}); "
        f"{metrics['trainable_parameters']:,} trainable of {metrics['parameters']:,} parameters; "
        f"{metrics['wall_seconds']:.0f} s\n" + (f"{metrics['verdict']}\n" if metrics.get("verdict") else "")
        + f"run directory: {output}"
    )


def _toml_string(value):
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":
    run_cli(main)
