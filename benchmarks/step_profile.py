"""Where a kerasllm training step spends its time, by ablation, in one process.

Times (median ms, XLA-compiled, fixed in-memory batch) of: the forward pass; forward + backward;
the whole step (forward + backward + AdamW with clipping and schedule); the whole step with the
attention core replaced by identity; with tanh-approximate GELU; and the fp32 matmul peak.
The differences attribute the step to forward, backward, optimizer, attention and activation.

`--fit` instead times what `pretrain` adds around the same compiled step (issue 21), on the real
`tf.data` stream of random ids, in alternating rounds: the compiled train function called
in a bare Python loop; `model.fit` with no callbacks; `fit` with kerasllm's callbacks
(`make_callbacks`: run state, NaN guard, throughput, log, checkpointer, TensorBoard), without
and with the progress bar; and the same with `steps_per_execution` = 10. `--lstm` times the
`wikitext2_word_lstm` step (its 33k-word head included) with and without XLA, with the LSTM
unrolled or as a while loop.

    python benchmarks/step_profile.py [--config small|baby] [--repeats 30] [--rounds 3]
    python benchmarks/step_profile.py --fit [--config small] [--steps 100] [--rounds 3]
    python benchmarks/step_profile.py --lstm [--steps 10] [--rounds 3]

Writes benchmarks/step_profile_<config>.json (`--fit`: step_profile_fit_<config>.json, `--lstm`:
step_profile_lstm.json).
"""

import argparse
import contextlib
import io
import dataclasses
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


def fit_variants(shape, steps):
    """name -> function running `steps` training steps of one compiled model, its way."""
    import tempfile

    from kerasllm.data import lm_dataset
    from kerasllm.training.callbacks import RunState, make_callbacks
    from kerasllm.training.rundir import RunDir
    from kerasllm.training.run import compile_model
    from kerasllm.config import load_config

    ids = np.random.default_rng(0).integers(0, VOCAB, 1_000_000).astype("int32")
    dataset = lm_dataset(ids, shape["block_size"], shape["batch_size"], seed=0)
    config = load_config("shakespeare_char_cpu", [f"model.n_layer={shape['n_layer']}",
                                                  f"model.n_head={shape['n_head']}", f"model.n_embd={shape['n_embd']}",
                                                  f"model.block_size={shape['block_size']}",
                                                  f"train.batch_size={shape['batch_size']}", "train.max_steps=100000"])
    tmp = Path(tempfile.mkdtemp(prefix="step_profile_"))
    models = {}

    def model_for(steps_per_execution):
        if steps_per_execution not in models:
            keras.utils.set_random_seed(0)
            train = dataclasses.replace(config.train, steps_per_execution=steps_per_execution)
            model = build_model(config.model, vocab_size=VOCAB)
            compile_model(model, config.replace(train=train), jit_compile=True)
            model.fit(dataset, steps_per_epoch=2 * steps_per_execution, epochs=1, verbose=0)  # trace + compile
            models[steps_per_execution] = model
        return models[steps_per_execution]

    def bare(_):
        model = model_for(1)
        iterator = iter(dataset)
        for _ in range(steps):
            logs = model.train_function(iterator)
        float(logs["loss"])

    def fit(callbacks, verbose=0, steps_per_execution=1):
        def run(round_index):
            model = model_for(steps_per_execution)
            cbs = []
            if callbacks:
                state = RunState(0, 1, shape["batch_size"] * shape["block_size"], max_steps=100000)
                run_dir = RunDir(tmp / f"run{round_index}_{verbose}_{steps_per_execution}")
                run_dir.path.mkdir(parents=True, exist_ok=True)
                cbs = make_callbacks(run_dir, model, config.train, state).ordered()
            model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=verbose, callbacks=cbs, shuffle=False)
        return run

    model_for(1), model_for(10)  # traced and compiled before any timing
    return {
        "compiled step, bare loop": bare,
        "fit, no callbacks": fit(False),
        "fit, kerasllm callbacks": fit(True),
        "fit, kerasllm callbacks, progress bar": fit(True, verbose=1),
        "fit, no callbacks, steps_per_execution=10": fit(False, steps_per_execution=10),
        "fit, kerasllm callbacks, steps_per_execution=10": fit(True, steps_per_execution=10),
    }


def lstm_variants(steps):
    """name -> function training `steps` steps of the `wikitext2_word_lstm` model one way."""
    from kerasllm.config import load_config
    from kerasllm.training.run import compile_model

    config = load_config("wikitext2_word_lstm")
    vocab, block, batch = 33228, config.model.block_size, config.train.batch_size  # the recipe's vocabulary
    ids = np.random.default_rng(0).integers(0, vocab, (64 * batch, block + 1)).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((ids[:, :-1], ids[:, 1:])).repeat().batch(batch)

    def variant(jit, unroll):
        keras.utils.set_random_seed(0)
        model = build_model(config.model, vocab_size=vocab)
        for lstm in model.lstms:
            lstm.unroll = unroll  # read when the layer is called
        compile_model(model, config, jit_compile=jit)
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # trace + compile
        return lambda _: model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)

    return {f"{'XLA' if jit else 'no XLA'}, {'unrolled' if unroll else 'while loop'}": variant(jit, unroll)
            for jit in (False, True) for unroll in (False, True)}


def profile_fit(args, shape):
    variants = lstm_variants(args.steps) if args.lstm else fit_variants(shape, args.steps)
    # Wall time is what a user waits, but on a shared host it swings with the load; the CPU time
    # of the Python thread that drives `fit` (TensorFlow runs the step on its own threads while
    # this one waits) is the host overhead per step, and barely moves with the load.
    clocks = {"wall": time.perf_counter, "process cpu": time.process_time, "driver thread cpu": time.thread_time}
    rounds = {clock: {name: [] for name in variants} for clock in clocks}
    for r in range(args.rounds):
        for name, run in variants.items():
            start = {clock: f() for clock, f in clocks.items()}
            with contextlib.redirect_stdout(io.StringIO()):  # the progress bar's output
                run(r)
            for clock, f in clocks.items():
                rounds[clock][name].append(1000 * (f() - start[clock]) / args.steps)
        print(f"round {r + 1} (wall, driver thread cpu): " + ", ".join(
            f"{w[-1]:.1f}/{d[-1]:.2f}" for w, d in zip(rounds["wall"].values(), rounds["driver thread cpu"].values()))
            + f" ms/step (load {os.getloadavg()[0]:.1f})", flush=True)
    ms = {clock: {name: statistics.median(v) for name, v in per.items()} for clock, per in rounds.items()}
    print(f"{'wikitext2_word_lstm' if args.lstm else args.config + ': ' + str(shape)}; {args.steps} steps per "
          f"variant per round, median of {args.rounds} rounds")
    print(f"{'variant':48} " + " ".join(f"{clock + ' ms':>20}" for clock in clocks))
    for name in variants:
        print(f"{name:48} " + " ".join(f"{ms[clock][name]:20.2f}" for clock in clocks))
    out = Path(__file__).with_name("step_profile_lstm.json" if args.lstm else f"step_profile_fit_{args.config}.json")
    out.write_text(json.dumps({"shape": shape, "steps": args.steps, "ms_per_step": ms, "rounds": rounds,
                               "load_average": os.getloadavg()}, indent=1))
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", choices=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fit", action="store_true", help="time the fit loop and callbacks around the step")
    parser.add_argument("--steps", type=int, default=100, help="--fit/--lstm: steps per variant per round")
    parser.add_argument("--lstm", action="store_true",
                        help="time the wikitext2_word_lstm step with and without XLA, unrolled or as a while loop")
    args = parser.parse_args()
    if args.fit or args.lstm:
        return profile_fit(args, CONFIGS[args.config])
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
