"""Training throughput: kerasllm's GPT vs an equal-size keras-hub stack, side by side.

The reference is the stack every Keras user can build from keras-hub:
`TokenAndPositionEmbedding` -> pre-norm `TransformerDecoder` x L -> LayerNorm -> Dense.
Both train with the same AdamW, loss, data (the real tf.data pipeline over Tiny Shakespeare,
char-level) and batch, in one process, in interleaved rounds so host-load drift hits both
alike. Reported: median tokens/s per round, the ratio to the reference, MFU against the fp32
matmul peak measured in the same run, first-step (trace + compile) time and RSS growth.

    python benchmarks/train_throughput.py [--configs small,baby] [--rounds 5] [--steps 30]

Writes benchmarks/train_throughput.json.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerasllm.config import ModelConfig, TrainConfig  # noqa: E402
from kerasllm.data import encode_documents, lm_dataset  # noqa: E402
from kerasllm.models import build_model  # noqa: E402
from kerasllm.plan.hardware import measure_peak_flops  # noqa: E402
from kerasllm.tokenizers import CharTokenizer  # noqa: E402
from kerasllm.training.optimizers import build_optimizer  # noqa: E402

CONFIGS = {
    # nanoGPT's CPU config for Tiny Shakespeare
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    # nanoGPT's "baby GPT" shape at batch 12
    "baby": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=12),
}


def shared_text():
    root = Path(os.environ.get("KERASLLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = root / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        sys.exit(f"Tiny Shakespeare not found at {path}; set KERASLLM_SHARED_DATA")
    return path.read_text()


def keras_hub_stack(vocab, n_layer, n_head, n_embd, block_size):
    inputs = keras.Input((block_size,), dtype="int32")
    x = keras_hub.layers.TokenAndPositionEmbedding(vocab, block_size, n_embd)(inputs)
    for _ in range(n_layer):
        x = keras_hub.layers.TransformerDecoder(
            intermediate_dim=4 * n_embd, num_heads=n_head, normalize_first=True,
            layer_norm_epsilon=1e-5, activation="gelu",
        )(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model(inputs, keras.layers.Dense(vocab)(x))


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepTimer(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,baby")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model per round")
    parser.add_argument("--variants", default="kerasllm,kerasllm-nojit,keras-hub,keras-hub-nojit")
    parser.add_argument("--out", default=str(Path(__file__).with_name("train_throughput.json")))
    args = parser.parse_args()

    text = shared_text()
    tokenizer = CharTokenizer.train([text])
    ids = encode_documents(tokenizer, [text])
    vocab = tokenizer.vocabulary_size
    peak = measure_peak_flops.__wrapped__(repeats=7)
    print(f"fp32 matmul peak (TF, n=2048, median): {peak / 1e9:.0f} GFLOP/s")
    results = {"peak_flops": peak, "configs": {}}

    for config_name in args.configs.split(","):
        c = CONFIGS[config_name]
        tokens_per_step = c["batch_size"] * c["block_size"]
        train_cfg = TrainConfig(max_steps=10_000, warmup_steps=10)
        dataset = lm_dataset(ids, c["block_size"], c["batch_size"], seed=0)
        models = {}
        for variant in args.variants.split(","):
            keras.utils.set_random_seed(0)
            jit = not variant.endswith("-nojit")
            before = rss_mb()
            if variant.startswith("kerasllm"):
                mc = ModelConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
                                 block_size=c["block_size"], bias=True, dropout=0.0)
                model = build_model(mc, vocab_size=vocab)
            else:
                model = keras_hub_stack(vocab, c["n_layer"], c["n_head"], c["n_embd"], c["block_size"])
            model.compile(
                optimizer=build_optimizer(train_cfg, model),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit,
            )
            timer = StepTimer()
            timer.times = []
            start = time.perf_counter()
            model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
            compile_s = time.perf_counter() - start
            params = model.count_params()
            n_attn = 12 * c["n_layer"] * c["block_size"] * c["n_embd"]
            flops_per_token = 6 * params + n_attn
            models[variant] = dict(model=model, compile_s=compile_s, rss_mb=rss_mb() - before,
                                   params=params, flops_per_token=flops_per_token, rounds=[])
            print(f"[{config_name}] {variant}: {params:,} params, first steps {compile_s:.1f} s")

        peaks = []
        for r in range(args.rounds):
            # interleaved and uncached, so MFU uses the peak of the same moments
            peaks.append(measure_peak_flops.__wrapped__(repeats=7))
            for variant, entry in models.items():
                timer = StepTimer()
                timer.times = []
                entry["model"].fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[timer],
                                   shuffle=False)
                step = statistics.median(timer.times[2:])
                entry["rounds"].append(tokens_per_step / step)
            print(f"[{config_name}] round {r + 1}: " + ", ".join(
                f"{v} {e['rounds'][-1]:,.0f} tok/s" for v, e in models.items()))

        ref_best = max(
            statistics.median(e["rounds"]) for v, e in models.items() if v.startswith("keras-hub")
        ) if any(v.startswith("keras-hub") for v in models) else None
        table = {}
        for variant, entry in models.items():
            tps = statistics.median(entry["rounds"])
            per_round_ratio = None
            if ref_best:
                refs = [max(models[v]["rounds"][i] for v in models if v.startswith("keras-hub"))
                        for i in range(args.rounds)]
                per_round_ratio = statistics.median(t / rr for t, rr in zip(entry["rounds"], refs))
            table[variant] = dict(
                tokens_per_second=tps, ratio_vs_keras_hub_best=per_round_ratio,
                mfu=tps * entry["flops_per_token"] / statistics.median(peaks),
                ms_per_step=1000 * tokens_per_step / tps,
                first_steps_seconds=entry["compile_s"], rss_growth_mb=entry["rss_mb"],
                parameters=entry["params"], rounds=entry["rounds"],
            )
        results["configs"][config_name] = dict(shape=c, variants=table, peak_flops_rounds=peaks)
        print(f"\n{config_name}: {c}; fp32 matmul peak during the rounds (median): "
              f"{statistics.median(peaks) / 1e9:.0f} GFLOP/s")
        print(f"{'variant':18} {'tok/s':>9} {'ms/step':>8} {'x keras-hub':>11} {'MFU':>6} {'compile s':>9} {'RSS MB':>7}")
        for variant, row in table.items():
            ratio = f"{row['ratio_vs_keras_hub_best']:.2f}" if row["ratio_vs_keras_hub_best"] else "-"
            print(f"{variant:18} {row['tokens_per_second']:9,.0f} {row['ms_per_step']:8.1f} {ratio:>11} "
                  f"{row['mfu']:6.1%} {row['first_steps_seconds']:9.1f} {row['rss_growth_mb']:7.0f}")
        print()
        del models
    results["backend"] = keras.backend.backend()
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
