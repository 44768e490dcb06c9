"""What the training features cost: gradient accumulation, precision policies, checkpoints.

Trains nanoGPT's CPU config (4 layers x 128, context 64, global batch 12) on Tiny Shakespeare
through `pretrain`, in interleaved rounds so host-load drift hits every variant alike, and
reports the median training tokens/s (validation and the compiling first interval excluded) and
its ratio to the float32 baseline of the same round. Separately times one atomic checkpoint
(`Checkpointer.save`: model + optimizer `.keras` and the state JSON) of the same model.

    python benchmarks/training_features.py [--rounds 3] [--steps 60] [--data PATH]

Writes benchmarks/training_features.json.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasllm.config import load_config  # noqa: E402
from kerasllm.training import pretrain  # noqa: E402
from kerasllm.training.callbacks import Checkpointer, RunState  # noqa: E402

VARIANTS = {
    "float32 (baseline)": [],
    "grad_accum_steps=2 (2 x 6)": ["train.grad_accum_steps=2"],
    "grad_accum_steps=4 (4 x 3)": ["train.grad_accum_steps=4"],
    "mixed_bfloat16": ["train.precision=mixed_bfloat16"],
    "mixed_float16 (loss scaling)": ["train.precision=mixed_float16"],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    names = [n for n in VARIANTS if n in args.variants.split(",")] or list(VARIANTS)
    interval = max(args.steps // 3, 1)
    rates = {name: [] for name in names}
    model = None
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for name in names:
                overrides = [
                    f'data.dataset="{args.data}"', f"train.max_steps={args.steps}", f"train.eval_interval={interval}",
                    "train.eval_steps=2", "train.jit_compile=false", *VARIANTS[name],
                ]
                config = load_config("shakespeare_char_cpu", overrides)
                model, _, metrics = pretrain(config, Path(tmp) / f"{round_index}-{len(rates[name])}-{names.index(name)}",
                                             restart=True, log=lambda *_: None, verbose=0)
                rates[name].append(metrics["tokens_per_second"])
                print(f"round {round_index + 1}: {name}: {metrics['tokens_per_second']:,.0f} tokens/s", flush=True)
        state = RunState(batches=0)
        checkpointer = Checkpointer(Path(tmp) / "ckpt", state, every=1, keep=1)
        checkpointer.set_model(model)
        save_ms = []
        for i in range(5):
            state.batches = i + 1
            start = time.perf_counter()
            checkpointer.save()
            save_ms.append((time.perf_counter() - start) * 1e3)

    rows = []
    for name in names:
        ratios = [r / b for r, b in zip(rates[name], rates[names[0]])]
        rows.append({"variant": name, "median_tokens_per_second": statistics.median(rates[name]),
                     "median_ratio_to_baseline": statistics.median(ratios), "runs": rates[name]})
    print(f"\n{'variant':34} {'tokens/s (median)':>18} {'x baseline (same round)':>24}")
    for row in rows:
        print(f"{row['variant']:34} {row['median_tokens_per_second']:>18,.0f} {row['median_ratio_to_baseline']:>24.2f}")
    print(f"\ncheckpoint save (model + optimizer + state, {model.count_params():,} parameters): "
          f"median {statistics.median(save_ms):.0f} ms of {len(save_ms)}")
    result = {"command": "python " + " ".join(sys.argv), "rounds": args.rounds, "steps": args.steps,
              "variants": rows, "checkpoint_save_ms": save_ms,
              "checkpoint_save_median_ms": statistics.median(save_ms), "parameters": model.count_params()}
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
