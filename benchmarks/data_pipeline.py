"""Data pipeline throughput per tokenizer: cold (train + tokenize) and warm (from the cache),
against the default GPT recipe's training consumption.

For each corpus and tokenizer kind, in one process:

* train: tokenizer training seconds (on the first `--train-mb` MB of the corpus);
* cold: tokenization into the on-disk cache (`cached_token_ids`, empty cache), tokens/s;
* warm: cache hit (memmap) + `lm_dataset` streaming `--batches` batches of the default
  recipe's shape (16 x 128), tokens/s, median of `--rounds`;
* ratio: warm tokens/s / the trainer's tokens/s.

The trainer's consumption is measured here too: the default recipe's GPT (compiled as the run
compiles it) trains `--steps` steps fed by the real pipeline and `--steps` steps fed by one
synthetic in-memory batch, interleaved over `--rounds`; medians and their ratio are reported.

    python benchmarks/data_pipeline.py [--kinds char,byte,...] [--train-mb 2] [--rounds 3]

Writes benchmarks/data_pipeline.json.
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

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerasllm.config import load_config  # noqa: E402
from kerasllm.data import lm_dataset, read_documents  # noqa: E402
from kerasllm.data.cache import cached_token_ids  # noqa: E402
from kerasllm.tokenizers import get_tokenizer_class  # noqa: E402

CORPORA = {"wikitext-2": "wikitext-2/train.txt", "hongloumeng": "chinese/hongloumeng.txt"}
KINDS = {
    "wikitext-2": ["char", "byte", "word", "wordpiece", "sentencepiece", "bpe"],
    "hongloumeng": ["char", "byte", "jieba", "wordpiece", "sentencepiece", "bpe"],
}
VOCAB = {"char": 0, "byte": 0, "word": 32000, "jieba": 32000, "wordpiece": 8000, "sentencepiece": 8000, "bpe": 8000}


def shared_dir():
    root = Path(os.environ.get("KERASLLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not root.is_dir():
        sys.exit(f"shared corpora not found at {root}; set KERASLLM_SHARED_DATA")
    return root


def stream_tokens_per_second(ids, batch, block, batches, seed):
    started = time.perf_counter()
    dataset = lm_dataset(ids, block, batch, seed=seed)
    for _ in dataset.take(batches):
        pass
    return batches * batch * block / (time.perf_counter() - started)


def trainer_tokens_per_second(ids, config, steps, rounds):
    """Median tokens/s of the default recipe's train step fed by the pipeline vs synthetic tensors.

    Both feeds go through `fit` exactly as a run does (the iterator is read inside the compiled
    step): the real one is `lm_dataset` over the corpus, the synthetic one a single in-memory
    batch repeated. Each round fits `steps` steps of each, interleaved; a step's time is taken
    from batch begin to batch end (so it includes fetching its batch), the first two steps of a
    fit are dropped. The feeds alternate order from round to round (ABBA) so that a drift in
    the host's speed hits both alike, and the result is the median over rounds of the
    same-round ratio pipeline / synthetic.
    """
    import keras

    from kerasllm.data.pipeline import _no_autotune
    from kerasllm.models import build_model
    from kerasllm.training.run import compile_model

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.started)

    batch, block = config.train.batch_size, config.model.block_size
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(config.model, vocab_size=int(ids.max()) + 1), config,
                          jit_compile=config.train.jit_compile)
    feeds = {"pipeline": lm_dataset(ids, block, batch, seed=1)}
    x, y = next(iter(feeds["pipeline"]))
    feeds["synthetic"] = _no_autotune(tf.data.Dataset.from_tensors((x, y)).repeat())
    for dataset in feeds.values():
        model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # trace + compile
    timings = {name: [] for name in feeds}
    for round_index in range(rounds):
        for name in sorted(feeds, reverse=bool(round_index % 2)):
            timer = StepTimes()
            timer.times = []
            model.fit(feeds[name], steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
            timings[name].append(batch * block / statistics.median(timer.times[2:]))
    summary = {name: statistics.median(v) for name, v in timings.items()}
    summary["ratio"] = statistics.median(p / s for p, s in zip(timings["pipeline"], timings["synthetic"]))
    return summary, timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default="", help="comma-separated tokenizer kinds (default: all per corpus)")
    parser.add_argument("--corpora", default="wikitext-2,hongloumeng")
    parser.add_argument("--train-mb", type=float, default=2.0, help="MB of text each tokenizer is trained on")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()

    config = load_config("default")
    batch, block = config.train.batch_size, config.model.block_size
    rows, cache = [], tempfile.mkdtemp(prefix="kerasllm-bench-cache-")
    trainer = None
    for corpus in args.corpora.split(","):
        documents = read_documents(shared_dir() / CORPORA[corpus])
        chars = sum(map(len, documents))
        train_text = [documents[0][: int(args.train_mb * 1e6)]]
        for kind in (args.kinds.split(",") if args.kinds else KINDS[corpus]):
            if kind not in KINDS[corpus] and args.kinds == "":
                continue
            started = time.perf_counter()
            tokenizer = get_tokenizer_class(kind).train(train_text, vocab_size=VOCAB[kind])
            train_s = time.perf_counter() - started
            started = time.perf_counter()
            ids, hit = cached_token_ids(tokenizer, documents, cache)
            cold_s = time.perf_counter() - started
            assert not hit
            warm = []
            for round_index in range(args.rounds):
                started = time.perf_counter()
                ids, hit = cached_token_ids(tokenizer, documents, cache)
                assert hit
                load_s = time.perf_counter() - started
                rate = stream_tokens_per_second(ids, batch, block, args.batches, seed=round_index)
                warm.append(rate)
            if trainer is None and kind == "char" and corpus == "wikitext-2":
                trainer, trainer_rounds = trainer_tokens_per_second(np.asarray(ids), config, args.steps, args.rounds)
            row = {
                "corpus": corpus, "tokenizer": kind, "vocabulary_size": tokenizer.vocabulary_size,
                "tokens": int(len(ids)), "tokens_per_char": len(ids) / chars,
                "train_seconds": train_s, "cold_tokens_per_second": len(ids) / cold_s,
                "cache_load_seconds": load_s, "warm_tokens_per_second": statistics.median(warm),
                "warm_rounds": warm,
            }
            rows.append(row)
            print(f"{corpus:12s} {kind:13s} vocab {row['vocabulary_size']:6d}  {row['tokens_per_char']:.3f} tok/char  "
                  f"train {train_s:6.1f} s  cold {row['cold_tokens_per_second']:12,.0f} tok/s  "
                  f"warm {row['warm_tokens_per_second']:12,.0f} tok/s", flush=True)

    trainer_rate = trainer["synthetic"] if trainer else None
    print()
    print(f"default recipe trainer (GPT {config.model.n_layer}x{config.model.n_embd}, batch {batch} x {block}): "
          + (f"{trainer['pipeline']:,.0f} tok/s fed by the pipeline, {trainer['synthetic']:,.0f} tok/s fed by "
             f"synthetic tensors (median same-round ratio pipeline / synthetic = {trainer['ratio']:.3f})"
             if trainer else "not measured (run with char on wikitext-2)"))
    print()
    print("| corpus | tokenizer | vocab | tokens/char | train s | cold tok/s | warm tok/s | warm / trainer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ratio = row["warm_tokens_per_second"] / trainer_rate if trainer_rate else float("nan")
        row["warm_over_trainer"] = ratio
        print(f"| {row['corpus']} | {row['tokenizer']} | {row['vocabulary_size']} | {row['tokens_per_char']:.3f} | "
              f"{row['train_seconds']:.1f} | {row['cold_tokens_per_second']:,.0f} | "
              f"{row['warm_tokens_per_second']:,.0f} | {ratio:,.0f}x |")
    result = {
        "command": "python " + " ".join(sys.argv),
        "batch_size": batch, "block_size": block, "train_mb": args.train_mb, "rows": rows,
        "trainer_tokens_per_second": trainer, "trainer_rounds": trainer_rounds if trainer else None,
    }
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
