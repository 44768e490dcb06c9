"""Training speed against the PyTorch anchors, side by side in one process (issue 21).

Two pairs, each trained alternately in rounds so that a busy host slows both alike:

* `gpt`: nanoGPT's model (`TorchGPT` and nanoGPT's AdamW/schedule from `nanogpt_parity.py`, on
  nanoGPT's random batches of Tiny Shakespeare) against `pretrain --recipe shakespeare_char_cpu`
  (4 layers, 4 heads, 128 wide, context 64, batch 12, no dropout), the whole kerasllm path:
  data pipeline, compiled step, callbacks.
* `baby` (not in the default pairs): nanoGPT's baby GPT (6 x 384, context 256) at batch 12, no
  dropout on either side, against `pretrain --recipe shakespeare_char` with the same settings.
* `lstm`: pytorch/examples `word_language_model` at its defaults (`WordLM` below: Embedding 200
  -> 2-layer nn.LSTM 200 -> Linear, dropout 0.2, bptt 35, batch 20, plain SGD lr 20, clip 0.25,
  state carried from batch to batch) against `pretrain --recipe wikitext2_word_lstm`.

Each round trains each side `--steps` steps (a fresh `pretrain` on the kerasllm side, so its
trace and compile fall in the first steps) and measures tokens/s over the steps after the first
`--warmup`, without validation. Printed: tokens/s of each side per round, the ratio
kerasllm / PyTorch per round and the median ratio; the same for tokens per second of process
CPU time, which a host shared with other work changes far less than the wall time. kerasllm's word tokenizer cuts WikiText-2
into more pieces than pytorch's whitespace split, so the LSTM pair also reports words/s
(tokens/s scaled by pytorch tokens per kerasllm token over the validation text).

`--lstm-epoch` instead trains each LSTM side for one epoch of its training tokens (slow: ~15 min
per side on 2 cores) and compares validation perplexity per pytorch token: pytorch's own
`evaluate` (batch 10, state carried), and kerasllm's model scored the same way over the same
text (its summed loss over valid.txt divided by pytorch's token count, with the state carried
through `call_with_cache`), next to the zero-state window loss `pretrain` reports.

PyTorch is not a kerasllm dependency: `pip install torch --index-url https://download.pytorch.org/whl/cpu`.

    python benchmarks/vs_pytorch.py                  # both pairs, 3 rounds (~10 min)
    python benchmarks/vs_pytorch.py --quick          # both pairs, fewer steps (~4 min)
    python benchmarks/vs_pytorch.py --pairs gpt --rounds 5 --steps 300
    python benchmarks/vs_pytorch.py --pairs baby --quick  # nanoGPT's baby GPT at batch 12
    python benchmarks/vs_pytorch.py --lstm-epoch     # one epoch per side, valid perplexity

Writes benchmarks/vs_pytorch.json (`--lstm-epoch`: vs_pytorch_lstm_epoch.json; `--out` to change).
"""

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from nanogpt_parity import DATA, SHAKESPEARE, NanoGPTData, TorchGPT, TorchLearner, nanogpt_lr  # noqa: E402 (exits without torch)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

WIKITEXT = DATA / "wikitext-2"


# --- pytorch/examples word_language_model -------------------------------------------------------

def tokenize(path, vocabulary):
    """`data.Corpus.tokenize`: whitespace-split words of each line plus `<eos>`, ids in order of first sight."""
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        for word in line.split() + ["<eos>"]:
            ids.append(vocabulary.setdefault(word, len(vocabulary)))
    return torch.tensor(ids, dtype=torch.int64)


def batchify(data, batch):
    """Cuts the stream into `batch` columns of equal length, `(rows, batch)`."""
    rows = data.size(0) // batch
    return data[: rows * batch].view(batch, -1).t().contiguous()


class WordLM(nn.Module):
    """`model.RNNModel('LSTM', ntoken, 200, 200, 2, dropout=0.2)` of word_language_model."""

    def __init__(self, vocab_size, n_embd=200, hidden=200, n_layer=2, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, n_embd)
        self.rnn = nn.LSTM(n_embd, hidden, n_layer, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab_size)
        self.n_layer, self.hidden = n_layer, hidden
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x, state):  # x: (T, B)
        out, state = self.rnn(self.drop(self.encoder(x)), state)
        return F.log_softmax(self.decoder(self.drop(out)), dim=-1), state  # (T, B, V)

    def init_state(self, batch):
        zeros = torch.zeros(self.n_layer, batch, self.hidden)
        return zeros, zeros.clone()


class TorchWordLM:
    """word_language_model's `train()` and `evaluate()`, batch by batch (seed 1111, its default)."""

    bptt, batch, eval_batch, clip = 35, 20, 10, 0.25

    def __init__(self):
        torch.manual_seed(1111)
        vocabulary = {}
        splits = {name: tokenize(WIKITEXT / f"{name}.txt", vocabulary) for name in ("train", "valid", "test")}
        self.vocab_size = len(vocabulary)
        self.train_data = batchify(splits["train"], self.batch)
        self.val_data = batchify(splits["valid"], self.eval_batch)
        self.model = WordLM(self.vocab_size)
        self.lr, self.position, self.state = 20.0, 0, None

    @property
    def epoch_batches(self):
        return len(range(0, self.train_data.size(0) - 1, self.bptt))

    def step(self):
        """One training batch; wraps to a new epoch (and a zero state) at the end of the stream."""
        if self.position >= self.train_data.size(0) - 1:
            self.position, self.state = 0, None
        i = self.position
        seq = min(self.bptt, self.train_data.size(0) - 1 - i)
        x, y = self.train_data[i:i + seq], self.train_data[i + 1:i + 1 + seq].reshape(-1)
        self.position += self.bptt
        self.model.train()
        state = self.state or self.model.init_state(self.batch)
        state = tuple(s.detach() for s in state)  # repackage_hidden: truncated BPTT
        self.model.zero_grad()
        out, self.state = self.model(x, state)
        loss = F.nll_loss(out.view(-1, self.vocab_size), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(p.grad, alpha=-self.lr)
        return float(loss.detach())

    def evaluate(self):
        """Mean loss per token over valid.txt, state carried (its `evaluate(val_data)`)."""
        self.model.eval()
        total, state = 0.0, self.model.init_state(self.eval_batch)
        with torch.no_grad():
            for i in range(0, self.val_data.size(0) - 1, self.bptt):
                seq = min(self.bptt, self.val_data.size(0) - 1 - i)
                out, state = self.model(self.val_data[i:i + seq], state)
                total += seq * F.nll_loss(out.view(-1, self.vocab_size), self.val_data[i + 1:i + 1 + seq].reshape(-1)).item()
        return total / (self.val_data.size(0) - 1)


# --- timing ---------------------------------------------------------------------------------------

def timed_torch_steps(step, steps, warmup):
    """`(wall, process cpu)` seconds of steps `warmup..steps` (each a whole iteration: batch,
    forward, backward, update)."""
    for _ in range(warmup):
        step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps - warmup):
        step()
    return time.perf_counter() - start, time.process_time() - cpu


def step_timer(warmup):
    """A Keras callback timing the steps after the first `warmup`, validation left out."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.marks, self.paused, self.epoch = [], [0.0, 0.0], 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):  # batch: the last step of the execution
            self.marks.append((self.epoch * self.params["steps"] + batch + 1, time.perf_counter(),
                               time.process_time(), self.paused))

        def on_test_begin(self, logs=None):
            self._test_start = (time.perf_counter(), time.process_time())

        def on_test_end(self, logs=None):
            self.paused += [time.perf_counter() - self._test_start[0], time.process_time() - self._test_start[1]]

        def steps_and_seconds(self):
            """`(steps, wall seconds, process cpu seconds)` after the warm-up, validation left out."""
            marks = [m for m in self.marks if m[0] >= warmup]
            (s0, t0, c0, p0), (s1, t1, c1, p1) = marks[0], marks[-1]
            return s1 - s0, (t1 - t0) - (p1[0] - p0[0]), (c1 - c0) - (p1[1] - p0[1])

    return StepTimer()


def kerasllm_config(recipe, overrides):
    from kerasllm.config import load_config

    return load_config(recipe, overrides)


def kerasllm_round(config, steps, warmup, workdir):
    """`pretrain` for `steps` steps; returns `((tokens/s, tokens per cpu second) after warmup,
    metrics, model, tokenizer)`."""
    from kerasllm.training.run import pretrain

    config = config.replace(train=dataclasses.replace(config.train, max_steps=steps))
    timer = step_timer(warmup)
    model, tokenizer, metrics = pretrain(config, workdir, restart=True, log=lambda *a: None, verbose=0,
                                         callbacks=[timer])
    n, seconds, cpu = timer.steps_and_seconds()
    tokens = n * config.train.batch_size * config.model.block_size
    return (tokens / seconds, tokens / cpu), metrics, model, tokenizer


# --- the pairs ------------------------------------------------------------------------------------

def gpt_pair(args, workdir, recipe="shakespeare_char_cpu", overrides=(), steps=(150, 300), name="gpt"):
    config = kerasllm_config(recipe, [f"data.dataset={SHAKESPEARE}", *overrides, *args.set])
    train, model = config.train, config.model
    torch.manual_seed(1337)
    data = NanoGPTData(SHAKESPEARE, model.block_size, train.batch_size)
    learner = TorchLearner(TorchGPT(len(data.chars), model.block_size, model.n_layer, model.n_head, model.n_embd),
                           train, nanogpt_lr(train))
    iteration = [0]

    def torch_step():
        x, y = data.get_batch("train")
        learner.step(iteration[0], x, y)
        iteration[0] += 1

    steps = args.steps or steps[0 if args.quick else 1]
    # eval only at the end (outside the timed steps), as the timing excludes it anyway
    config = config.replace(train=dataclasses.replace(config.train, eval_interval=steps))
    return run_rounds(name, args.rounds, steps, args.warmup, train.batch_size * model.block_size,
                      torch_step, lambda: kerasllm_round(config, steps, args.warmup, workdir / name)[0])


def baby_pair(args, workdir):
    """nanoGPT's baby GPT (6 x 384, context 256) at batch 12, without dropout on both sides (the
    reference model has none; dropout costs both about alike)."""
    return gpt_pair(args, workdir, "shakespeare_char", ["train.batch_size=12", "model.dropout=0.0"],
                    steps=(20, 40), name="baby")


def words_per_token(tokenizer):
    """pytorch tokens (words + <eos> per line) per kerasllm token, over valid.txt."""
    text = (WIKITEXT / "valid.txt").read_text(encoding="utf-8")
    words = sum(len(line.split()) + 1 for line in text.splitlines())
    return words / len(tokenizer.encode(text))


def lstm_config(args, overrides=()):
    dataset = WIKITEXT / "[tv][ra]*.txt"
    return kerasllm_config("wikitext2_word_lstm", [f"data.dataset={dataset}", *overrides, *args.set])


def lstm_pair(args, workdir):
    reference = TorchWordLM()
    steps = args.steps or (40 if args.quick else 100)
    warmup = max(args.warmup, 5)
    config = lstm_config(args, [f"train.eval_interval={steps}", "train.eval_steps=1"])
    holder = {}

    def kerasllm_side():
        rates, _, _, tokenizer = kerasllm_round(config, steps, warmup, workdir / "lstm")
        holder.setdefault("tokenizer", tokenizer)
        return rates

    result = run_rounds("lstm", args.rounds, steps, warmup, TorchWordLM.batch * TorchWordLM.bptt,
                        reference.step, kerasllm_side)
    ratio = words_per_token(holder["tokenizer"])
    result["pytorch_tokens_per_kerasllm_token"] = ratio
    result["kerasllm_words_per_second"] = [t * ratio for t in result["kerasllm_tokens_per_second"]]
    result["median_ratio_words_per_cpu_second"] = ratio * result["median_ratio_per_cpu_second"]
    result["median_ratio_words"] = statistics.median(
        k * ratio / t for k, t in zip(result["kerasllm_tokens_per_second"], result["pytorch_tokens_per_second"]))
    print(f"lstm: kerasllm's word pieces are {1 / ratio:.3f} per pytorch token; median ratio in words/s "
          f"{result['median_ratio_words']:.2f}")
    return result


def run_rounds(name, rounds, steps, warmup, tokens_per_step, torch_step, kerasllm_side):
    """Alternating rounds. Besides tokens/s, tokens per second of process CPU time: on a host shared
    with other work, wall time swings with the load while the CPU time a step costs barely does."""
    torch_tps, keras_tps, torch_tpc, keras_tpc = [], [], [], []
    for r in range(rounds):
        wall, cpu = timed_torch_steps(torch_step, steps, warmup)
        torch_tps.append(tokens_per_step * (steps - warmup) / wall)
        torch_tpc.append(tokens_per_step * (steps - warmup) / cpu)
        tps, tpc = kerasllm_side()
        keras_tps.append(tps)
        keras_tpc.append(tpc)
        print(f"{name} round {r + 1}: pytorch {torch_tps[-1]:8,.0f} tok/s  kerasllm {keras_tps[-1]:8,.0f} tok/s  "
              f"ratio {keras_tps[-1] / torch_tps[-1]:.3f}; per cpu second pytorch {torch_tpc[-1]:8,.0f} kerasllm "
              f"{keras_tpc[-1]:8,.0f} ratio {keras_tpc[-1] / torch_tpc[-1]:.3f}  (load {os.getloadavg()[0]:.2f})",
              flush=True)
    ratios = [k / t for k, t in zip(keras_tps, torch_tps)]
    cpu_ratios = [k / t for k, t in zip(keras_tpc, torch_tpc)]
    print(f"{name}: median ratio kerasllm / pytorch {statistics.median(ratios):.3f} (per cpu second "
          f"{statistics.median(cpu_ratios):.3f}) over {rounds} rounds of {steps} steps ({warmup} warm-up steps "
          "left out)", flush=True)
    return {"steps": steps, "warmup": warmup, "pytorch_tokens_per_second": torch_tps,
            "kerasllm_tokens_per_second": keras_tps, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "pytorch_tokens_per_cpu_second": torch_tpc, "kerasllm_tokens_per_cpu_second": keras_tpc,
            "ratios_per_cpu_second": cpu_ratios, "median_ratio_per_cpu_second": statistics.median(cpu_ratios)}


# --- one epoch of each LSTM, valid perplexity -------------------------------------------------------

def kerasllm_stateful_nll(model, ids, batch=10, bptt=35):
    """Summed loss of `ids` scored as pytorch's `evaluate` does: `batch` streams, `bptt` tokens at a
    time, the LSTM state carried through `call_with_cache`. Returns `(summed nll, tokens scored)`."""
    import keras
    import tensorflow as tf

    rows = len(ids) // batch
    streams = np.asarray(ids[: rows * batch], dtype="int32").reshape(batch, rows)  # (B, rows)

    @tf.function(reduce_retracing=True)
    def chunk(x, y, state):
        logits, state = model.call_with_cache(x, state)
        return tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)), state

    total, count, state = 0.0, 0, model.init_cache(batch)
    for i in range(0, rows - 1, bptt):
        seq = min(bptt, rows - 1 - i)
        nll, state = chunk(streams[:, i:i + seq], streams[:, i + 1:i + 1 + seq], state)
        total, count = total + float(nll), count + batch * seq
    return total, count


def torch_epoch(args):
    """The PyTorch side of `--lstm-epoch`, kept in `--pytorch-result` so a failed kerasllm side
    does not cost the ~20 minutes again (`--reuse-pytorch` reads it back)."""
    saved = Path(args.pytorch_result)
    if args.reuse_pytorch and saved.exists():
        result = json.loads(saved.read_text())
        if result["batches"] == (args.epoch_steps or result["epoch_batches"]):
            print(f"pytorch: reused {saved} (measured {result['measured']})", flush=True)
            return result
    reference = TorchWordLM()
    torch_steps = args.epoch_steps or reference.epoch_batches
    started = time.perf_counter()
    for _ in range(torch_steps):
        reference.step()
    torch_seconds = time.perf_counter() - started
    torch_val = reference.evaluate()
    result = {"batches": torch_steps, "epoch_batches": reference.epoch_batches, "seconds": torch_seconds,
              "tokens_per_second": torch_steps * 20 * 35 / torch_seconds, "val_loss": torch_val,
              "val_perplexity": math.exp(torch_val), "vocabulary": reference.vocab_size,
              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg()}
    saved.write_text(json.dumps(result, indent=1) + "\n")
    what = f"{torch_steps} steps" if args.epoch_steps else f"one epoch ({torch_steps} steps)"
    print(f"pytorch: {what} {torch_seconds:.0f} s, valid perplexity {math.exp(torch_val):.2f}", flush=True)
    return result


def lstm_epoch(args, workdir):
    torch_result = torch_epoch(args)

    from kerasllm.training.run import prepare_data

    config = lstm_config(args)
    data = prepare_data(config, log=lambda *a: None)
    block, batch = config.model.block_size, config.train.batch_size
    epoch_steps = args.epoch_steps or (len(data.train_ids) - 1) // block // batch  # every window once
    eval_steps = math.ceil(((len(data.val_ids) - 1) // block) / batch)
    config = config.replace(train=dataclasses.replace(config.train, eval_interval=epoch_steps, eval_steps=eval_steps))
    started = time.perf_counter()
    warmup = min(10, epoch_steps // 2)
    (tps, _), metrics, model, tokenizer = kerasllm_round(config, epoch_steps, warmup, workdir / "lstm_epoch")
    keras_seconds = time.perf_counter() - started
    nll, scored = kerasllm_stateful_nll(model, np.asarray(data.val_ids))
    # The same text's loss per pytorch token: kerasllm's pieces scored, over the pytorch tokens
    # (words + <eos> per line) of the share of valid.txt those pieces cover.
    words_per_piece = words_per_token(tokenizer)
    per_word = nll / (scored * words_per_piece)
    keras_result = {"steps": epoch_steps, "wall_seconds": keras_seconds, "tokens_per_second": tps,
                    "val_loss_windows_per_piece": metrics["val_loss"], "val_pieces": len(data.val_ids),
                    "val_loss_per_piece_stateful": nll / scored,
                    "val_loss_per_pytorch_token_stateful": per_word, "val_perplexity": math.exp(per_word),
                    "vocabulary": tokenizer.vocabulary_size, "pytorch_tokens_per_piece": words_per_piece,
                    "words_per_second": epoch_steps * batch * block / keras_seconds * words_per_piece}
    what = f"{epoch_steps} steps" if args.epoch_steps else f"one epoch ({epoch_steps} steps)"
    print(f"kerasllm: {what} {keras_seconds:.0f} s wall, {tps:,.0f} tok/s; valid perplexity per pytorch token "
          f"{math.exp(per_word):.2f} (per piece, state carried {math.exp(nll / scored):.2f}; pretrain's zero-state "
          f"window loss per piece {metrics['val_loss']:.4f})", flush=True)
    return {"pytorch": torch_result, "kerasllm": keras_result,
            "words_per_second_ratio": keras_result["words_per_second"] / torch_result["tokens_per_second"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="gpt,lstm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="steps per side per round; 0: gpt 300, lstm 100")
    parser.add_argument("--warmup", type=int, default=10, help="first steps of each round left out")
    parser.add_argument("--quick", action="store_true", help="fewer steps (gpt 150, lstm 40): a few minutes")
    parser.add_argument("--lstm-epoch", action="store_true", help="one epoch of each LSTM; valid perplexity")
    parser.add_argument("--epoch-steps", type=int, default=0,
                        help="--lstm-epoch: train this many steps per side instead of one epoch (a smoke test)")
    parser.add_argument("--pytorch-result", default=str(Path(tempfile.gettempdir()) / "vs_pytorch_lstm_epoch_torch.json"),
                        help="--lstm-epoch: where the PyTorch side's result is kept")
    parser.add_argument("--reuse-pytorch", action="store_true",
                        help="--lstm-epoch: reuse --pytorch-result when it holds the same number of batches")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch's threads")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE override for the kerasllm recipes")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vs_pytorch_") as tmp:
        workdir = Path(tmp)
        if args.lstm_epoch:
            result = {"mode": "lstm-epoch", **lstm_epoch(args, workdir)}
            out = args.out or HERE / "vs_pytorch_lstm_epoch.json"
        else:
            result = {"mode": "quick" if args.quick else "rounds", "rounds": args.rounds}
            pairs = {"gpt": gpt_pair, "baby": baby_pair, "lstm": lstm_pair}
            for name in args.pairs.split(","):
                result[name] = pairs[name](args, workdir)
            out = args.out or HERE / "vs_pytorch.json"
    result.update(load_average=os.getloadavg(), torch=torch.__version__, threads=args.threads, overrides=args.set)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
