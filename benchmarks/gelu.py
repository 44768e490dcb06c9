"""Exact GELU under XLA: TensorFlow's erfc form against the erf form `kerasllm.layers.MLP` uses.

Times each form inside a compiled loop (as the decoding loop runs it) on a decoding step's
activations (1 and 8 rows of 512) and, forward and backward, on a training batch's (16 x 128
rows of 512, the default recipe's MLP), and checks the two against float64.

    python benchmarks/gelu.py

Writes benchmarks/gelu.json.
"""

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from kerasllm.layers.mlp import MLP

FORMS = {
    "erfc (tf.nn.gelu)": lambda x: tf.nn.gelu(x, approximate=False),
    "erf (kerasllm)": MLP(512, kind="gelu")._activate,  # what the library runs
}


def loop_us(form, rows, steps, grad):
    x0 = tf.constant(np.random.default_rng(0).standard_normal((rows, 512)).astype("float32"))

    def body(i, x):
        if not grad:
            return i + 1, form(x) * 0.9 + 0.1
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(form(x))
        return i + 1, x - 1e-3 * tape.gradient(y, x)

    run = tf.function(lambda x: tf.while_loop(lambda i, x: i < steps, body, (0, x))[1], jit_compile=True)
    run(x0)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        run(x0).numpy()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times) / steps


def main():
    rows = []
    for name, rows_, steps, grad in (("decoding step, 1 row", 1, 500, False), ("decoding step, 8 rows", 8, 500, False),
                                     ("training batch 16 x 128, forward + backward", 2048, 20, True)):
        times = {form: loop_us(fn, rows_, steps, grad) for form, fn in FORMS.items()}
        rows.append({"case": name, **times})
    x = np.linspace(-10, 10, 200001).astype("float32")
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    error = {form: float(np.abs(fn(tf.constant(x)).numpy() - exact).max()) for form, fn in FORMS.items()}
    names = list(FORMS)
    print(f"| case | {names[0]}, us | {names[1]}, us | speed-up |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['case']} | {row[names[0]]:.2f} | {row[names[1]]:.2f} | {row[names[0]] / row[names[1]]:.2f}x |")
    print("max abs error against float64 on [-10, 10]: " + ", ".join(f"{k} {v:.1e}" for k, v in error.items()))
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps({"rows": rows, "max_abs_error": error}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
