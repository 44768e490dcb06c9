"""Greedy generation speed: the exported SavedModel's `generate` vs the in-Python Generator.

    python benchmarks/export_generate.py [--new 128] [--repeats 5] [--out benchmarks/export_generate.json]

Builds the default recipe's GPT shape (4 layers x 128, context 128, char vocabulary of 100) with
random weights, exports it, loads the SavedModel with `tf.saved_model.load` and times greedy
`generate` against `Generator.generate(temperature=0)` with and without XLA, at batch 1 and 8.
Prints a table of median new tokens per second (all rows counted) and writes JSON.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerasllm.export import LanguageModelServer, export_versioned  # noqa: E402
from kerasllm.generation import Generator  # noqa: E402
from kerasllm.models import GPT  # noqa: E402
from kerasllm.tokenizers import CharTokenizer  # noqa: E402


def median_seconds(fn, repeats):
    fn()  # trace / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--new", type=int, default=96, help="new tokens per row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/export_generate.json")
    args = parser.parse_args()

    tokenizer = CharTokenizer.train(["".join(chr(c) for c in range(32, 128))])
    model = GPT(vocab_size=tokenizer.vocabulary_size, block_size=128, n_layer=4, n_head=4, n_embd=128)
    model.build((None, None))
    folder = tempfile.mkdtemp()
    path = export_versioned(LanguageModelServer(model, tokenizer), folder, log=lambda *a: None)
    saved = tf.saved_model.load(str(path)).signatures["generate"]
    generators = {"Generator (XLA)": Generator(model, tokenizer), "Generator (no XLA)": Generator(model, tokenizer, jit_compile=False)}

    rows = []
    for batch in (1, 8):
        prompts = ["def main():\n    "] * batch
        ids = [tokenizer.encode(p) for p in prompts]
        runs = {
            "SavedModel generate": lambda: saved(
                prompt=tf.constant(prompts), max_new_tokens=tf.constant(args.new), temperature=tf.constant(0.0),
                top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0),
            )["token_ids"].numpy(),
            **{name: (lambda g=g: g.generate(ids, max_new_tokens=args.new, temperature=0)) for name, g in generators.items()},
        }
        outputs = {name: np.asarray(fn()) for name, fn in runs.items()}
        same = bool((outputs["SavedModel generate"] == outputs["Generator (XLA)"][:, -args.new:]).all())
        for name, fn in runs.items():
            seconds = median_seconds(fn, args.repeats)
            rows.append({"path": name, "batch": batch, "new_tokens": args.new, "median_s": seconds,
                         "tokens_per_s": batch * args.new / seconds, "greedy_equal_to_generator": same})

    print(f"{'path':<22} {'batch':>5} {'median s':>9} {'tokens/s':>9}")
    for row in rows:
        print(f"{row['path']:<22} {row['batch']:>5} {row['median_s']:>9.3f} {row['tokens_per_s']:>9.0f}")
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "repeats": args.repeats}, f, indent=1)


if __name__ == "__main__":
    main()
