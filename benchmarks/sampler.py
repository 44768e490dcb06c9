"""The sampler's cost per decoding step: the sort it used before against today's threshold searches.

`kerasllm.generation.sampling.sample_tokens` (temperature, top-k, top-p per row) runs inside
the compiled decoding loop at every step. Before, it sorted each row of logits (`ops.top_k`
with k = vocabulary); XLA:CPU sorts through a comparator call per pair. Today it finds the
top-k and top-p cut-offs by 32-pass searches over the logits' order keys and draws in
vocabulary order. Both run here side by side, each as a compiled 64-step loop, for batch rows x
vocabulary sizes (the default recipe's 171 characters, an 8k BPE, GPT-2's 50,257), with
temperature 0.8 and top-k 40 as `pretrain`'s sample; medians of CPU time per step.

    python benchmarks/sampler.py [--rounds 9]

Writes benchmarks/sampler.json.
"""

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from kerasllm.generation import sampling  # noqa: E402

STEPS = 64


def sorted_sample(logits, temperature, top_k, top_p, seeds, positions):
    """The sampler before: a full sort of every row, then cuts and a draw in sorted order."""
    vocab = logits.shape[-1]
    safe = ops.where(temperature > 0, temperature, 1.0)[:, None]
    ranked, order = ops.top_k(logits / safe, k=vocab)  # (B, V) each, descending
    rank = ops.arange(vocab)[None, :]
    keep = rank < ops.where(top_k > 0, ops.minimum(top_k, vocab), vocab)[:, None]
    probs = ops.softmax(ops.where(keep, ranked, -math.inf), axis=-1)
    mass_before = ops.cumsum(probs, axis=-1) - probs
    keep = keep & ((mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0))
    cdf = ops.cumsum(ops.where(keep, probs, 0.0), axis=-1)
    draw = sampling.uniform_per_row(seeds, positions)[:, None] * cdf[:, -1:]
    kept = ops.sum(ops.cast(keep, "int32"), axis=-1)
    choice = ops.minimum(ops.sum(ops.cast(cdf <= draw, "int32"), axis=-1), kept - 1)
    return ops.cast(ops.take_along_axis(order, choice[:, None], axis=1)[:, 0], "int32")


def ms_per_step(sample, rows, vocab, rounds, top_p=1.0):
    logits = tf.constant(np.random.default_rng(0).normal(size=(rows, vocab)).astype("float32"))

    @tf.function(jit_compile=True)
    def loop(logits):
        def body(i, total):
            token = sample(logits + tf.cast(i, tf.float32) * 1e-3, tf.fill((rows,), 0.8), tf.fill((rows,), 40),
                           tf.fill((rows,), top_p), tf.range(rows), tf.fill((rows,), i))
            return i + 1, total + token
        return tf.while_loop(lambda i, total: i < STEPS, body, (0, tf.zeros((rows,), tf.int32)))[1]

    loop(logits)  # compile
    times = []
    for _ in range(rounds):
        start = time.process_time()
        loop(logits).numpy()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times) / STEPS


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rows = []
    for batch, vocab in ((1, 171), (8, 171), (1, 8000), (8, 8000), (1, 50257), (8, 50257)):
        before = ms_per_step(sorted_sample, batch, vocab, args.rounds)
        now = ms_per_step(sampling._sample, batch, vocab, args.rounds)
        nucleus = ms_per_step(sampling._sample, batch, vocab, args.rounds, top_p=0.9)
        rows.append({"rows": batch, "vocab": vocab, "sort_ms": before, "thresholds_ms": now,
                     "thresholds_top_p_ms": nucleus, "speedup": before / now})
        print(f"| {batch} | {vocab:,} | {before:.3f} | {now:.3f} | {nucleus:.3f} | {before / now:.1f}x |", flush=True)
    Path(__file__).with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "steps": STEPS, "rounds": args.rounds, "load_average": os.getloadavg()}, indent=1) + "\n")


if __name__ == "__main__":
    print("| rows | vocabulary | sort (before), ms/step | thresholds, top-k 40 | thresholds, top-k 40 + top-p 0.9 | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    main()
