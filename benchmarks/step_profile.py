"""Where a kerasllm training step spends its time, by ablation, in one process.

Times (median ms, XLA-compiled, fixed in-memory batch) of: the forward pass; forward + backward;
the whole step (forward + backward + AdamW with clipping and schedule); the whole step with the
attention core replaced by identity; with tanh-approximate GELU; and the fp32 matmul peak.
The differences attribute the step to forward, backward, optimizer, attention and activation.

    python benchmarks/step_profile.py [--config small|baby] [--repeats 30] [--rounds 3]

Writes benchmarks/step_profile_<config>.json.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerasllm.layers.attention as attention_module  # noqa: E402
import kerasllm.layers.mlp as mlp_module  # noqa: E402
from kerasllm.config import ModelConfig, TrainConfig  # noqa: E402
from kerasllm.models import build_model  # noqa: E402
from kerasllm.training.optimizers import build_optimizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import CONFIGS  # noqa: E402

from kerasllm.plan.hardware import measure_peak_flops  # noqa: E402

VOCAB = 65


def make_step(shape, mode, x, y):
    """Builds and traces (compiles) one variant, so later monkeypatching cannot change it."""
    keras.utils.set_random_seed(0)
    model = build_model(
        ModelConfig(n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                    block_size=shape["block_size"], bias=True),
        vocab_size=VOCAB,
    )
    optimizer = build_optimizer(TrainConfig(), model)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        if mode == "forward":
            return loss
        grads = tape.gradient(loss, model.trainable_variables)
        if mode == "forward+backward":
            return loss, tf.add_n([tf.reduce_sum(g) for g in grads])
        optimizer.apply(grads, model.trainable_variables)
        return loss

    fn = tf.function(step, jit_compile=True)
    fn(x, y)
    return fn


def timed(fn, x, y, repeats):
    for _ in range(2):
        tf.nest.map_structure(lambda t: t.numpy(), fn(x, y))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(x, y))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", choices=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shape = CONFIGS[args.config]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, VOCAB, (shape["batch_size"], shape["block_size"])), tf.int32)
    y = tf.constant(rng.integers(0, VOCAB, (shape["batch_size"], shape["block_size"])), tf.int32)

    gelu = keras.ops.gelu
    steps = {mode: make_step(shape, mode, x, y) for mode in ["forward", "forward+backward", "full step"]}
    mlp_module.ops.gelu = lambda h, approximate=False: gelu(h, approximate=True)
    steps["full step, tanh GELU"] = make_step(shape, "full", x, y)
    mlp_module.ops.gelu = gelu
    attention = keras.ops.dot_product_attention
    attention_module.ops.dot_product_attention = lambda q, k, v, **kwargs: q
    steps["full step, no attention core"] = make_step(shape, "full", x, y)
    attention_module.ops.dot_product_attention = attention
    rounds = {name: [] for name in steps}
    peaks = []
    for _ in range(args.rounds):
        for name, fn in steps.items():
            rounds[name].append(timed(fn, x, y, args.repeats))
        peaks.append(measure_peak_flops.__wrapped__(repeats=7))  # uncached: measured again each round
    ms = {name: statistics.median(v) for name, v in rounds.items()}
    full = ms["full step"]
    rows = [
        ("forward", ms["forward"]),
        ("backward", ms["forward+backward"] - ms["forward"]),
        ("optimizer (AdamW, clip, schedule)", full - ms["forward+backward"]),
        ("attention core (softmax(QK^T)V)", full - ms["full step, no attention core"]),
        ("exact-GELU cost over tanh GELU", full - ms["full step, tanh GELU"]),
    ]
    print(f"{args.config}: {shape}; fp32 matmul peak {statistics.median(peaks) / 1e9:.0f} GFLOP/s")
    print(f"{'part':38} {'ms':>8} {'share of step':>14}")
    for name, value in rows:
        print(f"{name:38} {value:8.1f} {value / full:14.0%}")
    print(f"{'whole step':38} {full:8.1f} {1:14.0%}")
    out = Path(__file__).with_name(f"step_profile_{args.config}.json")
    out.write_text(json.dumps({"shape": shape, "ms": ms, "rounds": rounds, "peak_flops": peaks,
                               "attribution_ms": dict(rows)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
