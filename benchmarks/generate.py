"""Generation speed: kerasllm cached vs uncached vs keras-hub's GPT2CausalLM, equal dims.

All three models have random weights and the same shape (4 layers, 4 heads, 128 wide, vocab 65,
context 320); each generates 256 new tokens greedily after a 64-token prompt, at batch 1 and 8.
Times are medians of `--repeats` calls after a warm-up call (compilation is reported apart).
"first token" is the latency of a call that generates one token (prefill + one step).

    python benchmarks/generate.py [--repeats 3] [--new-tokens 256]
    KERAS_BACKEND=jax python benchmarks/generate.py

Writes benchmarks/generate.json (generate_jax.json on JAX).
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from kerasllm.generation import Generator  # noqa: E402
from kerasllm.models import GPT  # noqa: E402

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, vocab=65, context=320)


def timed(fn, repeats):
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--skip-uncached-batch8", action="store_true")
    backend = keras.backend.backend()
    default_out = "generate.json" if backend == "tensorflow" else f"generate_{backend}.json"
    parser.add_argument("--out", default=str(Path(__file__).with_name(default_out)))
    args = parser.parse_args()
    s = SHAPE
    keras.utils.set_random_seed(0)
    ours = GPT(vocab_size=s["vocab"], block_size=s["context"], n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"])
    ours.build((None, s["context"]))
    generator = Generator(ours)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=s["vocab"], num_layers=s["n_layer"], num_heads=s["n_head"],
        hidden_dim=s["n_embd"], intermediate_dim=4 * s["n_embd"], max_sequence_length=s["context"],
    )
    hub = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    hub.compile(sampler="greedy", jit_compile=True)  # auto resolves to False on CPU-only TF
    new, plen = args.new_tokens, args.prompt_length
    rows = []
    for batch in map(int, args.batches.split(",")):
        prompt = np.random.default_rng(batch).integers(4, s["vocab"], (batch, plen)).astype("int32")

        def hub_generate(n):
            ids = np.zeros((batch, plen + n), "int32")
            ids[:, :plen] = prompt
            mask = np.zeros_like(ids, bool)
            mask[:, :plen] = True
            return hub.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)

        cases = {
            "kerasllm cached (compiled loop)": lambda n: generator.generate(prompt, n, temperature=0),
            "kerasllm cached (streamed)": lambda n: np.stack(list(generator.stream(prompt, n, temperature=0)), 1),
            "kerasllm uncached": lambda n: generator.generate(prompt, n, temperature=0, use_cache=False),
            "keras-hub GPT2CausalLM": hub_generate,
        }
        if batch > 1 and args.skip_uncached_batch8:
            cases.pop("kerasllm uncached")
        outputs = {}
        for name, fn in cases.items():
            compile_s, full = timed(lambda: outputs.__setitem__(name, np.asarray(fn(new))), args.repeats)
            _, first_token = timed(lambda: fn(1), args.repeats)
            rows.append(dict(batch=batch, case=name, tokens_per_second=batch * new / full,
                             seconds=full, first_token_seconds=first_token, first_call_seconds=compile_s))
            print(f"batch {batch} | {name:32} | {batch * new / full:9,.0f} tok/s | first token "
                  f"{1000 * first_token:7.1f} ms | first call {compile_s:5.1f} s")
        a = outputs["kerasllm cached (compiled loop)"][:, plen:]
        if "kerasllm uncached" in outputs:
            assert (a == outputs["kerasllm uncached"][:, plen:]).all(), "cached != uncached"
        assert (a == outputs["kerasllm cached (streamed)"]).all(), "compiled loop != stream"
    by = {(r["batch"], r["case"]): r["tokens_per_second"] for r in rows}
    print()
    for batch in map(int, args.batches.split(",")):
        cached = by[(batch, "kerasllm cached (compiled loop)")]
        if (batch, "kerasllm uncached") in by:
            print(f"batch {batch}: cached / uncached = {cached / by[(batch, 'kerasllm uncached')]:.1f}x")
        print(f"batch {batch}: cached / keras-hub = {cached / by[(batch, 'keras-hub GPT2CausalLM')]:.2f}x")
    Path(args.out).write_text(json.dumps({"shape": s, "new_tokens": new, "prompt_length": plen,
                                          "backend": keras.backend.backend(), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
