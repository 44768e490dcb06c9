"""Serving throughput: 8 concurrent clients vs one client at a time, and a 16-client load test.

Starts `python -m kerasllm.recipes.serve` on a free loopback port and sends
`/v1/completions` requests (prompts of 8-60 characters of Python, `max_tokens` new tokens,
temperature 0.8, top-k 40, as the default recipe samples) with the standard library's HTTP
client:

* rounds of one client sending `--serial` requests one after another, then 8 clients sending
  `--serial` requests each at the same time (the same host, side by side, alternating, so a
  drift of the shared CPU hits both); the result is the median over rounds of the same-round
  throughput ratio (generated tokens per second);
* 16 clients sending `--load` requests in all: errors, p50 and p99 latency.

The server compiles the decoding loop's shapes before it listens (`--warm-up`, not timed).
`--ceiling` instead times `Generator.generate` itself in this process, 1 row vs 8 rows of the
same prompts (alternating, medians; the 8 rows also with the chunked prefill): the most any
batching scheduler can gain on this host.

    python benchmarks/serve.py --model saved_models/default [--rounds 3] [--serial 24] [--load 512]
    python benchmarks/serve.py --model saved_models/default --ceiling

Writes benchmarks/serve.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = [
    "def ", "import os\n", "class Parser:\n    def __init__(self", "    return ", "for key, value in ",
    "if __name__ == '__main__':\n    ", "def read_file(path):\n    with open(path) as f:\n        ",
    "# Copyright ", "    raise ValueError(", "self.assertEqual(", "try:\n    import ", "while True:\n",
]


def complete(url, prompt, max_tokens):
    """`(seconds, generated tokens, error or None)` of one request."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "top_k": 40}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.load(response)
        return time.perf_counter() - start, answer["usage"]["completion_tokens"], None
    except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
        return time.perf_counter() - start, 0, repr(error)


def phase(url, clients, requests, max_tokens):
    """Sends `requests` requests from `clients` threads; returns throughput, latencies, errors."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: complete(url, p, max_tokens), prompts))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    errors = [r[2] for r in results if r[2]]
    return {
        "clients": clients, "requests": requests, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": len(errors), "first_errors": errors[:3],
    }


def decoding_stats(url):
    with urllib.request.urlopen(url + "/health") as response:
        return json.load(response)["decoding"]


def ceiling(args):
    """Tokens/s of one `generate` call on 8 rows vs on 1 row, side by side.

    The 8-row call is timed twice: with the packed prefill `generate` uses for a batch, and
    with the chunked prefill (every row up to the longest prompt) for comparison.
    """
    from kerasllm.generation import Generator
    from kerasllm.training import load_run

    _, tokenizer, model = load_run(args.model)
    generator = Generator(model, tokenizer)
    packs = generator._packs
    rows = [tokenizer.encode(p) for p in PROMPTS[:8]]
    settings = {"max_new_tokens": args.max_tokens, "temperature": 0.8, "top_k": 40, "stop_ids": (tokenizer.eos_id,)}
    cases = {"1 row": (rows[:1], packs), "8 rows": (rows, packs), "8 rows, chunked prefill": (rows, False)}
    times, cpu = {name: [] for name in cases}, {name: [] for name in cases}
    for _ in range(5 * args.rounds + 1):  # the first round compiles
        for name, (batch, packed) in cases.items():
            generator._packs = packed
            start, start_cpu = time.perf_counter(), time.process_time()
            generator.generate(batch, **settings)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    wall = {name: statistics.median(t[1:]) for name, t in times.items()}
    cpu = {name: statistics.median(t[1:]) for name, t in cpu.items()}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {5 * args.rounds} calls each, medians")
    for name, seconds in wall.items():
        n = 1 if name == "1 row" else 8
        print(f"generate, {name}: {1000 * seconds:.1f} ms ({n * args.max_tokens / seconds:,.0f} tok/s), "
              f"CPU {1000 * cpu[name]:.1f} ms" + ("" if n == 1 else f": {8 * wall['1 row'] / seconds:.2f}x one row"))
    return {"wall_ms": {k: 1000 * v for k, v in wall.items()}, "cpu_ms": {k: 1000 * v for k, v in cpu.items()},
            "ratio": 8 * wall["1 row"] / wall["8 rows"], "ratio_chunked": 8 * wall["1 row"] / wall["8 rows, chunked prefill"],
            "load_average": os.getloadavg()[0], "cores": os.cpu_count()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="saved_models/default", help="run directory to serve")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serial", type=int, default=24, help="requests per client per round")
    parser.add_argument("--load", type=int, default=512, help="requests of the 16-client test")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--chunk-tokens", type=int, default=16)
    parser.add_argument("--batch-window-ms", type=float, default=20.0, help="the server's --batch-window-ms")
    parser.add_argument("--ceiling", action="store_true", help="time Generator.generate itself: 8 rows vs 1")
    parser.add_argument("--out", default=str(Path(__file__).with_name("serve.json")))
    args = parser.parse_args()
    if args.ceiling:
        result = ceiling(args)
        out = Path(args.out).with_name(Path(args.out).stem + "_ceiling.json")
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
        return

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("KERASLLM_API_KEY", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "kerasllm.recipes.serve", "--model", args.model, "--port", "0",
         "--max-batch", str(args.max_batch), "--chunk-tokens", str(args.chunk_tokens), "--max-queue", "256", "--warm-up",
         "--batch-window-ms", str(args.batch_window_ms)],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = server.stdout.readline()
        if line.startswith("compiled"):
            print(line.strip())
            line = server.stdout.readline()
        if not line.startswith("serving"):
            sys.exit(f"the server did not start: {line!r}")
        url = line.split()[5]
        print(line.strip())
        started = time.perf_counter()
        for clients in (1, 8):  # the server compiled every shape (--warm-up); this warms the rest
            phase(url, clients, 2 * clients, args.max_tokens)
        print(f"warm-up requests: {time.perf_counter() - started:.0f} s")

        rounds = []
        load_before = os.getloadavg()[0]
        for r in range(args.rounds):
            start = decoding_stats(url)
            one = phase(url, 1, args.serial, args.max_tokens)
            before = decoding_stats(url)
            eight = phase(url, 8, 8 * args.serial, args.max_tokens)
            after = decoding_stats(url)
            eight["rows_per_call"] = (after["rows"] - before["rows"]) / max(after["calls"] - before["calls"], 1)
            # The share of the phase the model spent inside decoding calls; the rest is HTTP and waiting.
            one["busy"] = (before["busy_ms"] - start["busy_ms"]) / (1000 * one["wall_s"])
            eight["busy"] = (after["busy_ms"] - before["busy_ms"]) / (1000 * eight["wall_s"])
            rounds.append({"one": one, "eight": eight, "ratio": eight["tokens_per_s"] / one["tokens_per_s"]})
            print(f"round {r + 1}: 1 client {one['tokens_per_s']:.0f} tok/s, 8 clients {eight['tokens_per_s']:.0f} "
                  f"tok/s ({eight['rows_per_call']:.1f} rows per decoding call; model busy {one['busy']:.0%} / "
                  f"{eight['busy']:.0%}): {rounds[-1]['ratio']:.2f}x")
        load = phase(url, 16, args.load, args.max_tokens)
        load_after = os.getloadavg()[0]
    finally:
        server.terminate()
        server.wait(120)

    ratio = statistics.median(r["ratio"] for r in rounds)
    rows = [
        ("1 client, one request at a time", statistics.median(r["one"]["tokens_per_s"] for r in rounds),
         statistics.median(r["one"]["p50_ms"] for r in rounds), statistics.median(r["one"]["p99_ms"] for r in rounds),
         sum(r["one"]["requests"] for r in rounds), sum(r["one"]["errors"] for r in rounds)),
        ("8 concurrent clients", statistics.median(r["eight"]["tokens_per_s"] for r in rounds),
         statistics.median(r["eight"]["p50_ms"] for r in rounds),
         statistics.median(r["eight"]["p99_ms"] for r in rounds),
         sum(r["eight"]["requests"] for r in rounds), sum(r["eight"]["errors"] for r in rounds)),
        ("16 concurrent clients (load test)", load["tokens_per_s"], load["p50_ms"], load["p99_ms"], load["requests"],
         load["errors"]),
    ]
    print(f"\n{args.max_tokens} new tokens per request, --max-batch {args.max_batch}, "
          f"--chunk-tokens {args.chunk_tokens}, model {args.model}")
    print("| clients | generated tok/s | p50 latency (ms) | p99 latency (ms) | requests | errors |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, tps, p50, p99, n, errors in rows:
        print(f"| {name} | {tps:,.0f} | {p50:,.0f} | {p99:,.0f} | {n} | {errors} |")
    print("\n| round | 1 client tok/s (p50 / p99 ms) | 8 clients tok/s (p50 / p99 ms) | rows per decoding call | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for r, rnd in enumerate(rounds):
        one, eight = rnd["one"], rnd["eight"]
        print(f"| {r + 1} | {one['tokens_per_s']:,.0f} ({one['p50_ms']:,.0f} / {one['p99_ms']:,.0f}) | "
              f"{eight['tokens_per_s']:,.0f} ({eight['p50_ms']:,.0f} / {eight['p99_ms']:,.0f}) | "
              f"{eight['rows_per_call']:.1f} | {rnd['ratio']:.2f}x |")
    print(f"\n8 clients vs 1: {ratio:.2f}x (median of {len(rounds)} same-round ratios; target 3x); "
          f"16 clients: {load['errors']} errors in {load['requests']} requests; "
          f"load average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} cores")
    result = {"model": args.model, "max_tokens": args.max_tokens, "max_batch": args.max_batch,
              "chunk_tokens": args.chunk_tokens, "rounds": rounds, "median_ratio": ratio, "load": load,
              "load_average": [load_before, load_after], "cores": os.cpu_count()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
