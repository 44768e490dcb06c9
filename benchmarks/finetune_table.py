"""Table of fine-tuned runs: accuracy, trainable parameters, steps and wall time.

    python benchmarks/finetune_table.py RUN_DIR [RUN_DIR ...] [--json OUT.json]

Reads each run's `metrics.json` and `finetune.json` (written by
`python -m kerasllm.recipes.finetune`), prints one row per run and writes the rows as JSON.
"""

import argparse
import json
from pathlib import Path


def row(run_dir):
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    info = json.loads((run_dir / "finetune.json").read_text(encoding="utf-8"))
    return {
        "run": run_dir.name,
        "from_run": info["from_run"],
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "val_macro_f1": metrics.get("val_macro_f1"),
        "trainable_parameters": metrics["trainable_parameters"],
        "parameters": metrics["parameters"],
        "steps": metrics["steps"],
        "wall_seconds": metrics["wall_seconds"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--json", default="benchmarks/finetune_table.json")
    args = parser.parse_args()
    rows = [row(r) for r in args.runs]

    def fmt(value, spec):
        return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)

    print(f"{'run':<22} {'val acc':>8} {'test acc':>8} {'val F1':>7} {'trainable':>10} {'params':>9} {'steps':>5} {'wall s':>7}")
    for r in rows:
        print(
            f"{r['run']:<22} {fmt(r['val_accuracy'], '8.4f')} {fmt(r['test_accuracy'], '8.4f')} "
            f"{fmt(r['val_macro_f1'], '7.4f')} {r['trainable_parameters']:>10,} {r['parameters']:>9,} "
            f"{r['steps']:>5} {r['wall_seconds']:>7.0f}"
        )
    Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
