"""Plan a training run: exact parameters, FLOPs, memory per device, time and layout.

    python -m kerasllm.recipes.plan --preset llama-7b --devices 8xH100 --tokens 1T
    python -m kerasllm.recipes.plan --preset gpt2-124m --devices 1xCPU --tokens 10B
    python -m kerasllm.recipes.plan --recipe llama7b_pretrain --json
    python -m kerasllm.recipes.plan --model hf://Qwen/Qwen2.5-0.5B --devices 1xH100 --tokens 1B

A recipe's `[model]`, `[train]` (batch, precision, optimizer, steps) and `[plan]` (devices,
tokens, layout, remat) tables are read; command-line options override them.
"""

import argparse
import json

from kerasllm.errors import ConfigError
from kerasllm.models.presets import get_preset, preset_names
from kerasllm.plan.planner import STRATEGIES, check_counts, parse_count, plan
from kerasllm.recipes.cli import add_verbose_flag, run_cli

_SWITCH = {"auto": None, "on": True, "off": False}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m kerasllm.recipes.plan",
        description="Plan parameters, FLOPs, memory, time and sharding of a training run.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help=f"a model preset: {', '.join(preset_names())}")
    source.add_argument("--recipe", help="a recipe TOML file or name in recipes/ (its model, [train] and [plan])")
    source.add_argument("--model", help="a run directory (its config) or a published checkpoint: a Hugging Face "
                        "or keras-hub preset folder, hf://ORG/NAME or a preset name (its architecture; "
                        "[train] and [plan] at their defaults, --set to change them)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe or run value, e.g. --set model.n_layer=12 (with --recipe or --model)")
    parser.add_argument("--devices", help="COUNTxNAME: 8xH100, 64xA100, 32xv4, 16xv5e, 256xv5p, 1xCPU (default 1xCPU)")
    parser.add_argument("--tokens", help="training tokens (10B, 1T) or 'chinchilla' (20 per parameter)")
    parser.add_argument("--batch", type=int, help="global batch in sequences (default: the preset's or recipe's)")
    parser.add_argument("--seq-len", type=int, help="sequence length (default: model.block_size)")
    parser.add_argument("--vocab", type=int, help="vocabulary size when the config leaves it to the tokenizer")
    parser.add_argument("--precision", choices=["float32", "mixed_bfloat16", "mixed_float16", "bfloat16"],
                        help="default: float32 on CPU, mixed_bfloat16 on accelerators")
    parser.add_argument("--optimizer", choices=["adamw", "adam", "momentum", "sgd"], help="default adamw")
    parser.add_argument("--mfu", type=float, help="model FLOPs utilization (default: 0.4; the CPU's measured value)")
    parser.add_argument("--peak-flops", type=float, help="peak FLOP/s per device, overriding the hardware table")
    parser.add_argument("--strategy", choices=["auto", *STRATEGIES], help="sharding layout (default: auto)")
    parser.add_argument("--remat", choices=list(_SWITCH), help="rematerialization (default: auto)")
    parser.add_argument("--micro-batch", type=int, help="sequences per device per pass (default: largest that fits)")
    parser.add_argument("--flash-attention", choices=list(_SWITCH), help="fused attention (default: auto)")
    parser.add_argument("--inference-batch", type=int, default=1, help="batch of the KV-cache estimate")
    parser.add_argument("--no-measure", action="store_true", help="use a nominal CPU peak instead of measuring it")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_verbose_flag(parser)
    return parser


def plan_arguments(args):
    """Turns parsed arguments into `(model_config, plan keyword arguments)`.

    The preset's or recipe's values come first, the flags override them, and the counts are
    checked before a recipe without a vocabulary size trains its tokenizer on the corpus.
    """
    kwargs = dict(strategy="auto", remat="auto", flash_attention=None, micro_batch=0, devices="1xCPU")
    if args.preset:
        model = _preset_arguments(args, kwargs)
        config = None
    else:
        config = _model_source_config(args.model, args.overrides) if args.model else None
        if config is None:
            from kerasllm.config import load_config

            config = load_config(args.recipe, args.overrides)
        model = config.model
        _recipe_arguments(config, kwargs)
    _flag_arguments(args, kwargs)
    check_counts(**{key: kwargs.get(key) for key in ("global_batch", "micro_batch", "vocab_size", "peak_flops")},
                 inference_batch=kwargs["inference_batch"])
    if config is not None and not (args.vocab or model.vocab_size):
        model.vocab_size = _tokenizer_size(config)
    return model, kwargs


def _model_source_config(source, overrides):
    """A run directory's config, or a checkpoint's architecture (no weights read) under the
    default `[train]` and `[plan]`; `--set` applies to either."""
    from pathlib import Path

    from kerasllm.config import Config, load_config

    if (Path(source) / "config.toml").is_file():
        return load_config(str(Path(source) / "config.toml"), overrides)
    from kerasllm.checkpoints import pretrained_model_config

    config = Config(name=Path(str(source).rstrip("/")).name or "pretrained", model=pretrained_model_config(source))
    for item in overrides:
        config.override(item)
    return config


def _preset_arguments(args, kwargs):
    if args.overrides:
        raise ConfigError("--set needs --recipe or --model; a preset is a fixed architecture")
    from kerasllm.models.presets import PRESETS

    model = get_preset(args.preset)
    kwargs.update(name=args.preset, global_batch=max(1, PRESETS[args.preset].batch_tokens // model.block_size))
    return model


def _recipe_arguments(config, kwargs):
    """A recipe's [train] and [plan] tables as plan arguments."""
    model, train, p = config.model, config.train, config.plan
    optimizer = train.optimizer
    if optimizer == "sgd":
        optimizer = "momentum" if train.momentum else "sgd"
    kwargs.update(
        name=config.name, global_batch=train.batch_size, devices=p.devices, optimizer=optimizer,
        tokens=parse_count(p.tokens, "plan.tokens") if p.tokens
        else float(train.max_steps * train.batch_size * model.block_size),
        mfu=p.mfu or None, strategy=p.layout, micro_batch=p.micro_batch,
        remat="auto" if p.remat == "auto" else p.remat == "on",
        flash_attention=_SWITCH[p.flash_attention],
        precision=None if train.precision == "auto" else train.precision,
    )


def _flag_arguments(args, kwargs):
    """The command-line flags given, over the preset's or recipe's values."""
    for key, value in (("devices", args.devices), ("global_batch", args.batch), ("seq_len", args.seq_len),
                       ("vocab_size", args.vocab), ("precision", args.precision), ("optimizer", args.optimizer),
                       ("mfu", args.mfu), ("peak_flops", args.peak_flops), ("strategy", args.strategy),
                       ("micro_batch", args.micro_batch)):
        if value is not None:
            kwargs[key] = value
    if args.remat:
        kwargs["remat"] = "auto" if args.remat == "auto" else args.remat == "on"
    if args.flash_attention:
        kwargs["flash_attention"] = _SWITCH[args.flash_attention]
    if args.tokens:
        kwargs["tokens"] = None if args.tokens.lower() == "chinchilla" else parse_count(args.tokens)
    kwargs["inference_batch"] = args.inference_batch
    kwargs["measure_cpu"] = not args.no_measure


def _tokenizer_size(config):
    """The vocabulary of a recipe whose model leaves it to the tokenizer: train it on the corpus."""
    from kerasllm.training.run import prepare_data

    return prepare_data(config, log=lambda *_: None).tokenizer.vocabulary_size


def main(argv=None):
    args = build_parser().parse_args(argv)
    model, kwargs = plan_arguments(args)
    result = plan(model, **kwargs)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())


if __name__ == "__main__":
    run_cli(main)
