"""Token-store preparation: throughput per tokenizer, worker speed-up, and peak memory of a
short pretraining run on corpora far larger than the old in-memory path could hold.

Corpora are built in a scratch folder by shuffling and repeating the paragraphs of the
English corpora in ../shared/data (Tiny Shakespeare, WikiText-2) up to the asked size, and
deleted at the end; nothing is committed.

* throughput (`--mb`, default 200): end to end (read, train the tokenizer, encode, write
  shards; timed inside a fresh process, after its imports, with the CPU seconds of that
  process and its workers over the same span), MB of text per second, for char, byte and BPE 8k with `data.num_proc` = 1 and 2,
  and Hugging Face `tokenizers` training a byte-level BPE of the same size on the same file
  and encoding it with `encode_batch`, in the same run;
* rss (`--gb`, default 1,5): peak RSS of `pretrain --recipe default --set train.max_steps=20`
  on each corpus: the main process's peak (getrusage of the child) and the peak of the sum
  over its process tree (sampled from /proc every 0.2 s; forked workers share pages, so the
  sum over-counts).

The CPU may be shared with other work: compare the rows of one run side by side. Each row also
records the CPU seconds it used (user + system, all threads and workers) and the load average
when it ended, so a run on a busy host can be told from one on a quiet host.

    python benchmarks/data_prepare.py [--mb 200] [--gb 1,5] [--parts throughput,rss] [--tokenizers char,byte,bpe]
        [--repeat 1] [--workers 1,2]

Writes benchmarks/data_prepare.json and prints a table.
"""

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCES = ("tinyshakespeare/input.txt", "wikitext-2/train.txt", "wikitext-2/valid.txt", "wikitext-2/test.txt")


def shared_dir():
    root = Path(os.environ.get("KERASLLM_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        sys.exit(f"shared corpora not found at {root}; set KERASLLM_SHARED_DATA")
    return root


def build_corpus(path, size_bytes, seed=0):
    """Writes about `size_bytes` of text: the shared paragraphs, shuffled anew on every pass."""
    paragraphs = []
    for name in SOURCES:
        paragraphs += [p + "\n\n" for p in (shared_dir() / name).read_text(encoding="utf-8").split("\n\n") if p.strip()]
    rng, written = random.Random(seed), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size_bytes:
            rng.shuffle(paragraphs)
            for paragraph in paragraphs:
                f.write(paragraph)
                written += len(paragraph.encode("utf-8"))
                if written >= size_bytes:
                    break
    return path


CPU_SECONDS = """
import resource
def cpu_seconds():  # this process (all its threads) and its ended workers
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
"""

PREPARE = CPU_SECONDS + """
import sys, time
from kerasllm.config import load_config
from kerasllm.data.prepare import prepare_lm_data
config = load_config("default", sys.argv[1:])
started, cpu = time.perf_counter(), cpu_seconds()
prepare_lm_data(config.data, log=lambda *_: None)
print(time.perf_counter() - started, cpu_seconds() - cpu)
"""


def prepare_seconds(corpus, cache, tokenizer, num_proc):
    """Seconds of `prepare_lm_data` (read, train the tokenizer, encode, write; empty cache) in
    a fresh process, not counting the interpreter's start and imports; and its CPU seconds."""
    settings = [f'data.dataset="{corpus}"', f"data.tokenizer={tokenizer}", f"data.num_proc={num_proc}",
                f'data.cache_dir="{cache}"', "data.vocab_size=" + ("8000" if tokenizer == "bpe" else "0")]
    done = subprocess.run([sys.executable, "-c", PREPARE, *settings], check=True, cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    shutil.rmtree(cache, ignore_errors=True)
    return tuple(map(float, done.stdout.split()[-2:]))


HF_BASELINE = CPU_SECONDS + """
import sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
path = sys.argv[1]
started, cpu = time.perf_counter(), cpu_seconds()
hf = Tokenizer(models.BPE())
hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
trainer = trainers.BpeTrainer(vocab_size=8000, min_frequency=2, show_progress=False,
    special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
hf.train([path], trainer)
with open(path, encoding="utf-8") as f:
    while True:
        lines = f.readlines(1 << 24)
        if not lines:
            break
        hf.encode_batch(lines)
print(time.perf_counter() - started, cpu_seconds() - cpu)
"""


def hf_seconds(corpus):
    """Seconds of HF `tokenizers`: train a BPE of 8,000 on the file, then `encode_batch` it
    (its own Rust thread pool uses every core), and its CPU seconds."""
    done = subprocess.run([sys.executable, "-c", HF_BASELINE, str(corpus)], check=True, capture_output=True, text=True)
    return tuple(map(float, done.stdout.split()[-2:]))


def tree_rss(pid):
    """Sum of the RSS (bytes) of `pid` and its descendants, from /proc."""
    children, total = {}, 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except OSError:
                continue
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            total += int((Path("/proc") / str(current) / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        stack += children.get(current, [])
    return total


def pretrain_peak(corpus, scratch):
    """`(main process peak RSS, peak of the process tree's summed RSS, seconds)` in bytes."""
    command = [sys.executable, "-m", "kerasllm.recipes.pretrain", "--recipe", "default", "--data", str(corpus),
               "--set", "train.max_steps=20", "--set", f'data.cache_dir="{scratch / "cache"}"',
               "--output", str(scratch / "run"), "--no-sample"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                               stdout=subprocess.DEVNULL)
    peak_tree = 0
    while process.poll() is None:
        peak_tree = max(peak_tree, tree_rss(process.pid))
        time.sleep(0.2)
    if process.returncode:
        sys.exit(f"pretrain failed with status {process.returncode}")
    seconds = time.perf_counter() - started
    main_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
    shutil.rmtree(scratch / "run", ignore_errors=True)
    shutil.rmtree(scratch / "cache", ignore_errors=True)
    return main_peak, peak_tree, seconds


def throughput(scratch, mb, kinds=("char", "byte", "bpe"), repeat=1, workers=(1, 2)):
    """Every measurement `repeat` times, in rounds (so a drift of the shared host hits all of them)."""
    corpus = build_corpus(scratch / f"corpus-{mb}mb.txt", mb * 10**6)
    rows = []

    def measure(what, num_proc, run, round_):
        seconds, cpu = run()
        rows.append({"what": what, "num_proc": num_proc, "round": round_, "seconds": seconds, "mb_per_s": mb / seconds,
                     "cpu_seconds": cpu, "load_1min": os.getloadavg()[0]})
        print(f"  {rows[-1]}", flush=True)

    for round_ in range(1, repeat + 1):
        for kind in kinds:
            for num_proc in workers:
                measure(f"kerasllm {kind}" + (" 8k" if kind == "bpe" else ""), num_proc,
                        lambda kind=kind, num_proc=num_proc: prepare_seconds(corpus, scratch / "cache", kind, num_proc),
                        round_)
            if kind == "bpe":  # the peer that the BPE row must not be slower than
                measure("HF tokenizers bpe 8k train + encode_batch", "rayon", lambda: hf_seconds(corpus), round_)
    corpus.unlink()
    return {"mb": mb, "rows": rows, "summary": summarize(rows)}


def summarize(rows):
    """Medians over rounds, 2 workers vs 1, and kerasllm's BPE vs HF's, each per round then the median."""
    def seconds(what, num_proc, round_):
        return next((r["seconds"] for r in rows if (r["what"], r["num_proc"], r["round"]) == (what, num_proc, round_)), None)

    summary = []
    for what, num_proc in dict.fromkeys((r["what"], r["num_proc"]) for r in rows):
        mine = [r for r in rows if (r["what"], r["num_proc"]) == (what, num_proc)]
        row = {"what": what, "num_proc": num_proc, "rounds": len(mine),
               "seconds": statistics.median(r["seconds"] for r in mine),
               "mb_per_s": statistics.median(r["mb_per_s"] for r in mine),
               "cpu_seconds": statistics.median(r["cpu_seconds"] for r in mine)}
        pairs = [(seconds(what, 1, r["round"]), r["seconds"]) for r in mine]
        if num_proc == 2 and all(one for one, _ in pairs):
            row["vs_one_worker"] = statistics.median(one / two for one, two in pairs)
        hf = [seconds("HF tokenizers bpe 8k train + encode_batch", "rayon", r["round"]) for r in mine]
        if "bpe" in what and num_proc != "rayon" and all(hf):
            row["vs_hf"] = statistics.median(h / r["seconds"] for h, r in zip(hf, mine))
        summary.append(row)
    return summary


def rss(scratch, sizes_gb):
    rows = []
    for gb in sizes_gb:
        corpus = build_corpus(scratch / f"corpus-{gb}gb.txt", int(gb * 10**9))
        main_peak, tree_peak, seconds = pretrain_peak(corpus, scratch)
        rows.append({"corpus_gb": gb, "main_peak_gb": main_peak / 1e9, "tree_peak_gb": tree_peak / 1e9,
                     "seconds": seconds})
        print(f"  {rows[-1]}", flush=True)
        corpus.unlink()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="throughput corpus size in MB")
    parser.add_argument("--gb", default="1,5", help="comma-separated corpus sizes in GB for the RSS runs")
    parser.add_argument("--parts", default="throughput,rss")
    parser.add_argument("--tokenizers", default="char,byte,bpe", help="throughput: which tokenizers (bpe adds HF's)")
    parser.add_argument("--repeat", type=int, default=1, help="throughput: rounds of every measurement (medians)")
    parser.add_argument("--workers", default="1,2", help="throughput: comma-separated data.num_proc values")
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="folder for the generated corpora")
    parser.add_argument("--output", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kerasllm-bench-", dir=args.scratch))
    result = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    try:
        if "throughput" in args.parts:
            result["throughput"] = throughput(scratch, args.mb, args.tokenizers.split(","), args.repeat,
                                              [int(w) for w in args.workers.split(",")])
        if "rss" in args.parts:
            result["rss"] = rss(scratch, [float(g) for g in args.gb.split(",")])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    rows = result.get("throughput", {}).get("summary", [])
    print(f"\n{result.get('throughput', {}).get('mb', '?')} MB, {os.cpu_count()} CPUs; medians over rounds")
    print("| what | workers | rounds | seconds | MB/s | 2 workers vs 1 | vs HF | CPU seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        vs_one = f"{row['vs_one_worker']:.2f}x" if "vs_one_worker" in row else ""
        vs_hf = f"{row['vs_hf']:.2f}x" if "vs_hf" in row else ""
        print(f"| {row['what']} | {row['num_proc']} | {row['rounds']} | {row['seconds']:.1f} | {row['mb_per_s']:.2f} | "
              f"{vs_one} | {vs_hf} | {row['cpu_seconds']:.1f} |")
    print("\n| corpus | main process peak RSS | process tree peak RSS | seconds |\n| --- | --- | --- | --- |")
    for row in result.get("rss", []):
        print(f"| {row['corpus_gb']:g} GB | {row['main_peak_gb']:.2f} GB | {row['tree_peak_gb']:.2f} GB | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
