"""Pretrain a language model from the command line.

    python -m kerasllm.recipes.pretrain [--recipe NAME_OR_PATH] [--data PATH_OR_DATASET]
                                        [--output DIR] [--set key=value ...] [--restart]

With no arguments this trains `recipes/default.toml`: a small character-level GPT on the
built-in `python-stdlib` corpus (no download), in a few minutes on a laptop CPU.
"""

import time
from pathlib import Path

from kerasllm.config import load_config
from kerasllm.recipes.cli import add_verbose_flag, recipe_parser, run_cli


def build_parser():
    parser = recipe_parser(
        "python -m kerasllm.recipes.pretrain", "Pretrain a GPT or LSTM language model and write a run directory.",
        data_help="a text file, a directory or glob of text files",
    )
    parser.add_argument(
        "--output", default=None,
        help="run directory (default: saved_models/<recipe name>); an existing checkpoint "
        "there is resumed",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.n_layer=6 (repeatable)",
    )
    parser.add_argument(
        "--restart", action="store_true",
        help="delete the run in --output (checkpoints, logs, model) and start over",
    )
    parser.add_argument(
        "--init-from", default=None, metavar="CHECKPOINT",
        help="continue pretraining from a run directory, a Hugging Face or keras-hub folder, "
        "hf://ORG/NAME or a preset name: its architecture, weights and tokenizer replace the "
        "recipe's [model] and tokenizer",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="allow --output to hold another kind of run (e.g. a fine-tuned classifier); it is deleted first",
    )
    parser.add_argument("--no-sample", action="store_true", help="skip the generated sample at the end")
    add_verbose_flag(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.insert(0, f"data.dataset={_toml_string(args.data)}")
    config = load_config(args.recipe, overrides)
    output = Path(args.output) if args.output else Path("saved_models") / config.name

    from kerasllm.training import pretrain, sample_text  # heavy imports after argument checks

    print(f"kerasllm: recipe {config.name!r} -> {output}")
    started = time.perf_counter()
    model, tokenizer, metrics = pretrain(config, output, restart=args.restart, overwrite=args.overwrite, init_from=args.init_from)
    print(
        f"\nval loss {metrics['val_loss']:.4f} (perplexity {metrics['val_perplexity']:.2f}, "
        f"{metrics['val_bits_per_token']:.3f} bits/token) after {metrics['steps']} steps; "
        f"{metrics['tokens_per_second'] or 0:,.0f} tokens/s; {model.count_params():,} parameters"
    )
    if not args.no_sample:
        print(f"\n--- sample ({config.sample.max_new_tokens} tokens, temperature {config.sample.temperature}) ---")
        print(sample_text(model, tokenizer, config.sample))
        print("---")
    print(f"run directory: {output} ({time.perf_counter() - started:.0f} s)")


def _toml_string(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":
    run_cli(main)
