"""Planner vs measurement: predicted training time of CPU recipes against real runs.

This CPU's float32 matmul peak is measured (`measure_peak_flops`) before every run and the best
value so far is used: a single measurement can catch a moment when other work has the cores.
For each recipe a short calibration run measures MFU (model FLOP/s of the steady train steps /
peak); then the recipe runs for more steps and its measured time (from the end of the compiling
first step to the end of the last step, validation passes included) is compared with the
planner's prediction `FLOPs / (peak x MFU)` for the same tokens. A second prediction uses the median MFU of the
*other* recipes (leave-one-out), the accuracy of one CPU MFU for every recipe.

    KERASLLM_DATA_DIR=../shared/data python benchmarks/plan_vs_measured.py   # from the repository root

Prints a table and writes benchmarks/plan_vs_measured.json.
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

import keras  # noqa: E402

from kerasllm.config import load_config  # noqa: E402
from kerasllm.plan import count_params, flops_per_token  # noqa: E402
from kerasllm.plan.hardware import measure_peak_flops  # noqa: E402
from kerasllm.plan.planner import plan  # noqa: E402
from kerasllm.training import pretrain  # noqa: E402

RECIPES = {  # recipe -> measured steps (sized for a few minutes on 2 cores)
    "shakespeare_char_cpu": 200,
    "default": 150,
    "shakespeare_char_lstm": 200,
    "shakespeare_char": 20,
}


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []
        self.durations = []  # begin -> end of each train step (no validation, checkpoints, fit restarts)

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())
        self.durations.append(self.ends[-1] - self._begin)


def timed_run(recipe, steps, eval_every, eval_steps, workdir):
    """Runs `recipe` for `steps` steps.

    Returns:
        (seconds from the end of step 1 to the end of the last step, seconds inside those train
        steps only, tokens in them, whole wall time, config).
    """
    overrides = [f"train.max_steps={steps}", f"train.eval_interval={eval_every}",
                 f"train.checkpoint_every={eval_every}", "sample.max_new_tokens=1"]
    if eval_steps:
        overrides.append(f"train.eval_steps={eval_steps}")
    config = load_config(recipe, overrides)
    timer = StepTimer()
    started = time.perf_counter()
    pretrain(config, Path(workdir) / recipe, restart=True, log=lambda *a: None, verbose=0, callbacks=[timer])
    wall = time.perf_counter() - started
    tokens = (len(timer.ends) - 1) * config.train.batch_size * config.model.block_size
    return timer.ends[-1] - timer.ends[0], sum(timer.durations[1:]), tokens, wall, config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES)[:3])
    parser.add_argument("--calibration-steps", type=int, default=40)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the measured steps")
    parser.add_argument("--output", default=str(Path(__file__).with_name("plan_vs_measured.json")))
    args = parser.parse_args(argv)

    rows = []
    peak = 0.0
    with tempfile.TemporaryDirectory() as workdir:
        for recipe in args.recipes:
            steps = max(4, int(RECIPES.get(recipe, 200) * args.scale))
            cal_steps = min(args.calibration_steps, steps)
            peak = max([peak] + [measure_peak_flops.__wrapped__("float32") for _ in range(3)])
            _, cal_seconds, cal_tokens, _, config = timed_run(recipe, cal_steps, cal_steps, 1, workdir)
            fpt = flops_per_token(config.model)
            mfu = fpt * cal_tokens / (cal_seconds * peak)
            seconds, step_seconds, tokens, wall, config = timed_run(recipe, steps, steps // 2, 0, workdir)
            predicted = plan(config.model, devices="1xCPU", tokens=tokens, global_batch=config.train.batch_size,
                             mfu=mfu, peak_flops=peak, measure_cpu=False)["time"]["seconds"]
            rows.append(dict(recipe=recipe, parameters=count_params(config.model)["total"], flops_per_token=fpt,
                             steps=steps, tokens=tokens, peak=peak, mfu=mfu,
                             predicted_seconds=predicted, measured_seconds=seconds,
                             ratio=predicted / seconds, step_seconds=step_seconds,
                             ratio_steps=predicted / step_seconds, wall_seconds=wall))
            print(f"{recipe}: MFU {mfu:.3f}, predicted {predicted:.1f} s, measured {seconds:.1f} s", flush=True)
    for row in rows:
        others = [r["mfu"] for r in rows if r is not row]
        if others:
            loo = statistics.median(others)
            row["mfu_leave_one_out"] = loo
            row["ratio_leave_one_out"] = row["ratio"] * row["mfu"] / loo

    print()
    header = (f"{'recipe':<23}{'params':>10}{'MFLOP/tok':>10}{'steps':>7}{'peak GF/s':>10}{'MFU':>7}"
              f"{'predicted s':>12}{'measured s':>11}{'ratio':>7}{'in steps s':>11}{'ratio':>7}{'LOO ratio':>10}"
              f"{'run wall s':>11}")
    print(header)
    for r in rows:
        print(f"{r['recipe']:<23}{r['parameters']:>10,}{r['flops_per_token'] / 1e6:>10.2f}{r['steps']:>7}"
              f"{r['peak'] / 1e9:>10.0f}{r['mfu']:>7.3f}{r['predicted_seconds']:>12.1f}{r['measured_seconds']:>11.1f}"
              f"{r['ratio']:>7.2f}{r['step_seconds']:>11.1f}{r['ratio_steps']:>7.2f}"
              f"{r.get('ratio_leave_one_out', float('nan')):>10.2f}{r['wall_seconds']:>11.1f}")
    Path(args.output).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
