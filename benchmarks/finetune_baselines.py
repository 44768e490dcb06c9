"""Fine-tuned classifiers against the baselines: SST-2 subsets of 1k/4k/16k sentences and ChnSentiCorp.

For each labelled set, test accuracy of: the majority class and naive Bayes (always, seconds),
and, given a backbone run, the classifier trained from scratch (same architecture, random
weights), fine-tuned from the backbone, and fine-tuned with LoRA. Every model run uses
`finetune`'s size-aware defaults (epochs, peak rate, warmup, validation every epoch, the best
validation pass kept) with the head of `recipes/sst2_finetune.toml`; the validation set is
`finetune.val_fraction` (10%) of the training subset, and the baselines train on the same 90%.

    python -m kerasllm.recipes.pretrain --recipe wikitext2_wordpiece_pretrain    # the backbone
    python benchmarks/finetune_baselines.py [--backbone saved_models/wikitext2_wordpiece_pretrain]
        [--zh-backbone saved_models/chnsenticorp_char_pretrain] [--sizes 1000,4000,16000]
        [--models scratch,finetuned,lora] [--sets sst2,chnsenticorp] [--data ../shared/data/sentiment]
        [--set KEY=VALUE ...]

SST-2 subsets are seeded random samples of `sst2/train.tsv`, scored on `sst2/test.tsv` (GLUE's
labelled dev set, 872 sentences). ChnSentiCorp has one file: a seeded 20% is the test set.
Prints a markdown table and writes benchmarks/finetune_baselines.json (rows merge with the
rows already there, so the columns can be run one at a time).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kerasllm.data.readers import read_labelled  # noqa: E402
from kerasllm.training.baselines import baseline_reports  # noqa: E402
from kerasllm.training.finetune.common import holdout  # noqa: E402

SEED = 1337  # train.seed: the same validation hold-out as the fine-tuning runs
HEAD = ["finetune.pooling=\"mean\"", "finetune.add_dense=1", "finetune.head_dropout=0.1",
        "train.batch_size=32", "train.weight_decay=0.01"]
MODELS = {
    "scratch": ["finetune.from_scratch=true"],
    "finetuned": [],
    "lora": ["finetune.lora_rank=8"],
}
COLUMNS = ("majority", "naive_bayes", "scratch", "finetuned", "lora")


def write_tsv(path, texts, labels):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{' '.join(t.split())}\t{label}\n" for t, label in zip(texts, labels))
    return path


def labelled_sets(data, names, sizes, folder):
    """`{name: (train_tsv, test_tsv, max_length, zh)}` written into `folder`."""
    sets = {}
    if "sst2" in names:
        texts, labels = read_labelled(data / "sst2" / "train.tsv", "sentence", "label")
        test = data / "sst2" / "test.tsv"
        order = np.random.default_rng(0).permutation(len(texts))
        for n in sizes:
            rows = order[:n]
            train = write_tsv(folder / f"sst2_{n}.tsv", [texts[i] for i in rows], [labels[i] for i in rows])
            sets[f"SST-2 {n // 1000}k"] = (train, test, 96, False)
    if "chnsenticorp" in names:
        texts, labels = read_labelled(data / "chnsenticorp" / "ChnSentiCorp_htl_all.csv", "review", "label")
        train_rows, test_rows = holdout(len(texts), 0.2, seed=0)
        train = write_tsv(folder / "chn_train.tsv", [texts[i] for i in train_rows], [labels[i] for i in train_rows])
        test = write_tsv(folder / "chn_test.tsv", [texts[i] for i in test_rows], [labels[i] for i in test_rows])
        sets["ChnSentiCorp"] = (train, test, 128, True)
    return sets


def baselines(train_tsv, test_tsv):
    """Majority and naive Bayes test accuracy, trained on the rows the model trains on."""
    texts, labels = read_labelled(train_tsv)
    keep, _ = holdout(len(texts), 0.1, SEED)
    test_texts, test_labels = read_labelled(test_tsv)
    names = sorted({str(label) for label in labels})
    index = {name: i for i, name in enumerate(names)}
    started = time.perf_counter()
    reports = baseline_reports([texts[i] for i in keep], [index[str(labels[i])] for i in keep], test_texts,
                               [index[str(label)] for label in test_labels], names)
    return {
        "train_examples": len(keep),
        "majority": reports["majority"]["accuracy"],
        "naive_bayes": reports["naive_bayes"]["accuracy"],
        "baseline_seconds": time.perf_counter() - started,
    }


def model_run(backbone, train_tsv, test_tsv, max_length, overrides, output):
    from kerasllm.config import Config
    from kerasllm.training.finetune import finetune

    config = Config(name=output.name)
    for item in [f"data.dataset=\"{train_tsv}\"", f"finetune.test_data=\"{test_tsv}\"", "finetune.text_column=\"sentence\"",
                 "finetune.label_column=\"label\"", f"finetune.max_length={max_length}", *HEAD, *overrides]:
        config.override(item)
    _, _, metrics = finetune(config, backbone, output, log=print, verbose=0)
    return {key: metrics[key] for key in ("test_accuracy", "val_accuracy", "steps", "selected_step", "wall_seconds")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/sentiment"))
    parser.add_argument("--backbone", default=None, help="English backbone run (SST-2 model columns)")
    parser.add_argument("--zh-backbone", default=None, help="Chinese backbone run (ChnSentiCorp model columns)")
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--sets", default="sst2,chnsenticorp")
    parser.add_argument("--models", default="scratch,finetuned,lora")
    parser.add_argument("--runs", default=None, help="keep the fine-tuned runs here (default: a temporary folder)")
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every model run (repeatable)")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs or tmp)
        sets = labelled_sets(Path(args.data), args.sets.split(","), [int(n) for n in args.sizes.split(",")], Path(tmp))
        for name, (train, test, max_length, zh) in sets.items():
            row = results.setdefault(name, {})
            row.update(baselines(train, test))
            backbone = args.zh_backbone if zh else args.backbone
            for model in [m for m in args.models.split(",") if m] if backbone else []:
                output = runs / f"{name.replace(' ', '_')}_{model}"
                row[model] = model_run(backbone, train, test, max_length, [*MODELS[model], *args.set], output)
                row[f"{model}_backbone"] = str(backbone)
                row[f"{model}_overrides"] = args.set
                Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


def table(results):
    lines = ["| set | train examples | " + " | ".join(COLUMNS) + " |", "| --- " * (len(COLUMNS) + 2) + "|"]
    for name, row in results.items():
        cells = []
        for column in COLUMNS:
            value = row.get(column)
            value = value.get("test_accuracy") if isinstance(value, dict) else value
            cells.append("not measured" if value is None else f"{100 * value:.1f}%")
        lines.append(f"| {name} | {row['train_examples']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
