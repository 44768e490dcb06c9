"""kerasllm against a PyTorch reference of nanoGPT on `shakespeare_char_cpu` (issue 2).

The reference (`TorchGPT`, `nanogpt_loop`) follows nanoGPT's `model.py` and `train.py` with the
CPU settings, random draw for random draw: under `torch.manual_seed(s)` it creates and
initializes the weights in nanoGPT's order and draws the same training batches and the same
20 + 20 batches of each loss estimate, so for s = 1337 it prints the val loss nanoGPT prints.

* `--mode seeds`: the reference alone, for several seeds: the val loss nanoGPT reports at step
  2000 (its 20-batch estimate) and the loss of the same model over the whole validation split.
* `--mode parity`: kerasllm's GPT, built and compiled exactly as `pretrain` does (its AdamW,
  schedule, clipping, XLA), starts from the reference's initial weights for the first seed and
  trains on the same batches as the reference; the reference follows Keras' learning-rate
  schedule, so only the implementation differs. Equal computations give equal losses step for
  step (up to float32 rounding) and equal final validation losses.
* `--mode noise`: for a kerasllm run's model, the spread of that 20-batch estimate around the
  loss over every validation window.

"Whole split" losses use the non-overlapping windows that fit in the validation split (all but
its last < 64 targets; `python -m kerasllm.recipes.evaluate --stride 64` also scores that tail).
PyTorch is not a kerasllm dependency; this benchmark needs it installed beside kerasllm
(`pip install torch --index-url https://download.pytorch.org/whl/cpu`).

    python benchmarks/nanogpt_parity.py --mode seeds --seeds 1337 1 2 3 4 5 6 7
    python benchmarks/nanogpt_parity.py --mode parity --seeds 1337
    python benchmarks/nanogpt_parity.py --mode noise --run RUN_DIR
"""

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
DATA = pathlib.Path(os.environ.get("KERASLLM_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:
    sys.exit("this benchmark needs PyTorch beside kerasllm: pip install torch --index-url https://download.pytorch.org/whl/cpu")


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.norm_1 = nn.LayerNorm(n_embd, bias=False)
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.attn_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.norm_2 = nn.LayerNorm(n_embd, bias=False)
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.fc(self.norm_2(x))))  # exact GELU, as nn.GELU()


class TorchGPT(nn.Module):
    """GPT-2 layout without biases, tied head, GPT-2 init (nanoGPT's `model.py` settings).

    Modules are created and initialized in nanoGPT's order (embeddings, blocks, head; then the
    N(0, 0.02) re-init module by module, then the scaled residual projections), so under
    `torch.manual_seed(s)` the initial weights use the same random draws as nanoGPT's.
    """

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.final_norm = nn.LayerNorm(n_embd, bias=False)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.token_embedding.weight = self.head.weight
        for module in [self.token_embedding, self.position_embedding,
                       *(m for b in self.blocks for m in (b.qkv, b.attn_proj, b.fc, b.mlp_proj)), self.head]:
            nn.init.normal_(module.weight, 0.0, 0.02)
        for block in self.blocks:
            for module in (block.attn_proj, block.mlp_proj):
                nn.init.normal_(module.weight, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx):
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(idx.shape[1]))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))  # (B, T, V)


def torch_optimizer(model, train):
    """nanoGPT's AdamW: decoupled weight decay on >= 2-D weights only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.learning_rate, betas=(train.beta1, train.beta2), eps=train.epsilon)


def keras_paths(n_layer):
    """`TorchGPT` parameter name -> the end of the matching kerasllm GPT variable path."""
    paths = {"token_embedding.weight": "token_embedding/embeddings",
             "position_embedding.weight": "position_embedding/embeddings",
             "final_norm.weight": "final_norm/gamma"}
    for i in range(n_layer):
        for torch_name, keras_name in (("norm_1.weight", "norm_1/gamma"), ("qkv.weight", "attn/qkv/kernel"),
                                       ("attn_proj.weight", "attn/proj/kernel"), ("norm_2.weight", "norm_2/gamma"),
                                       ("fc.weight", "mlp/fc/kernel"), ("mlp_proj.weight", "mlp/proj/kernel")):
            paths[f"blocks.{i}.{torch_name}"] = f"block_{i}/{keras_name}"
    return paths


def copy_torch_weights(torch_model, keras_model):
    """Sets the kerasllm GPT's weights to `TorchGPT`'s (Dense kernels are `(in, out)`, Linear `(out, in)`)."""
    variables = {v.path: v for v in keras_model.weights}
    paths = keras_paths(len(torch_model.blocks))
    for name, param in torch_model.named_parameters():  # the tied head appears once, as the embedding
        end = paths[name]
        matches = [path for path in variables if path.endswith(end)]
        if len(matches) != 1:
            raise KeyError(f"{end}: found {matches} among the Keras weights")
        value = param.detach().numpy()
        variables[matches[0]].assign(value.T if value.ndim == 2 and "embedding" not in name else value)


class NanoGPTData:
    """nanoGPT's `shakespeare_char` data: 65 sorted characters of the whole text, first 90% train,
    and `get_batch`'s windows at `torch.randint` offsets."""

    def __init__(self, path, block, batch):
        text = path.read_text(encoding="utf-8")
        self.chars = sorted(set(text))
        lookup = {c: i for i, c in enumerate(self.chars)}
        ids = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
        n = int(0.9 * len(ids))
        self.splits = {"train": ids[:n], "val": ids[n:]}
        self.block, self.batch = block, batch

    def get_batch(self, split):
        data, block = self.splits[split], self.block
        starts = torch.randint(len(data) - block, (self.batch,)).tolist()
        return np.stack([data[s:s + block] for s in starts]), np.stack([data[s + 1:s + 1 + block] for s in starts])

    def val_windows(self):
        """The validation split as non-overlapping windows from its start (the last
        `(len - 1) % block` targets, under 64 of 111,539, are left out)."""
        val, block = self.splits["val"], self.block
        starts = np.arange((len(val) - 1) // block) * block
        return np.stack([val[s:s + block] for s in starts]), np.stack([val[s + 1:s + 1 + block] for s in starts])


class TorchLearner:
    """The reference with nanoGPT's AdamW groups, `lr_fn(step)` learning rate and clipping."""

    def __init__(self, model, train, lr_fn):
        self.model, self.train, self.lr_fn = model, train, lr_fn
        self.optimizer = torch_optimizer(model, train)

    def step(self, it, x, y):
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_fn(it)
        logits = self.model(torch.from_numpy(x))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def summed_loss(self, x, y):
        with torch.no_grad():
            logits = self.model(torch.from_numpy(x))
            return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1),
                                         reduction="sum"))

    def loss(self, x, y):
        return mean_loss(self.summed_loss, x, y)


class KerasLearner:
    """kerasllm's GPT compiled as `pretrain` compiles it (its optimizer, schedule, clipping, XLA)."""

    def __init__(self, model):
        self.model = model

    def step(self, it, x, y):
        return float(self.model.train_on_batch(x.astype("int32"), y.astype("int32")))

    def summed_loss(self, x, y):
        import keras
        logits = self.model.predict_on_batch(x.astype("int32"))
        return float(np.sum(keras.ops.convert_to_numpy(
            keras.losses.sparse_categorical_crossentropy(y.astype("int32"), logits, from_logits=True))))

    def loss(self, x, y):
        return mean_loss(self.summed_loss, x, y)


def mean_loss(summed_loss, x, y, batch=256):
    """Mean per-token loss of windows `x -> y`, `batch` windows per forward pass."""
    return sum(summed_loss(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)) / y.size


def nanogpt_loop(data, learners, train, eval_iters=20, log=None):
    """nanoGPT's training loop, random draw for random draw (the caller seeds torch and builds the
    models first): the first batch, then at every `eval_interval` the `eval_iters` train and val
    batches of its loss estimate, then one batch per step. Every learner sees the same batches.

    Returns:
        `(curve, train_losses)`: the estimates at each eval step, and per learner its loss per step.
    """
    curve, losses = [], {name: [] for name in learners}
    x, y = data.get_batch("train")
    for it in range(train.max_steps + 1):
        if it % train.eval_interval == 0:
            point = {"step": it}
            for split in ("train", "val"):
                batches = [data.get_batch(split) for _ in range(eval_iters)]
                for name, learner in learners.items():
                    point[f"{name}_{split}"] = float(np.mean([learner.loss(bx, by) for bx, by in batches]))
            curve.append(point)
            if log:
                log(point)
        if it == train.max_steps:
            break
        batch = (x, y)
        x, y = data.get_batch("train")  # nanoGPT draws the next batch before its backward pass
        for name, learner in learners.items():
            losses[name].append(learner.step(it, *batch))
    return curve, losses


def nanogpt_lr(train):
    """nanoGPT's `get_lr`: warmup `lr * (it + 1) / (warmup + 1)`, cosine to `min_lr` at `lr_decay_steps`."""
    def lr(it):
        if it < train.warmup_steps:
            return train.learning_rate * (it + 1) / (train.warmup_steps + 1)
        ratio = min(1.0, (it - train.warmup_steps) / (train.lr_decay_steps - train.warmup_steps))
        return train.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (train.learning_rate - train.min_lr)
    return lr


def recipe():
    from kerasllm.config import load_config
    return load_config("shakespeare_char_cpu", [f"data.dataset={SHAKESPEARE}"])


def parity(args):
    """kerasllm and the reference from nanoGPT's initial weights for `args.seeds[0]`, on nanoGPT's
    batches; the reference follows Keras' learning-rate schedule so only the framework differs."""
    import keras
    from kerasllm.models import build_model
    from kerasllm.training.run import compile_model
    from kerasllm.training.schedules import build_schedule

    config = recipe()
    train, model = config.train, config.model
    data = NanoGPTData(SHAKESPEARE, model.block_size, train.batch_size)
    keras_model = compile_model(build_model(model, vocab_size=len(data.chars)), config, jit_compile=True)
    keras_model.optimizer.build(keras_model.trainable_variables)
    torch.manual_seed(args.seeds[0])
    torch_model = TorchGPT(len(data.chars), model.block_size, model.n_layer, model.n_head, model.n_embd)
    copy_torch_weights(torch_model, keras_model)
    schedule = build_schedule(train)  # Keras evaluates it at `iterations`, i.e. before each update
    learners = {"keras": KerasLearner(keras_model), "torch": TorchLearner(torch_model, train, lambda it: float(schedule(it)))}
    started = time.perf_counter()
    curve, losses = nanogpt_loop(data, learners, train, log=lambda p: print(
        f"step {p['step']:5d}  val estimate keras {p['keras_val']:.5f} torch {p['torch_val']:.5f}  "
        f"({time.perf_counter() - started:.0f} s)", flush=True))
    vx, vy = data.val_windows()
    diffs = np.abs(np.array(losses["keras"]) - np.array(losses["torch"]))
    result = {
        "mode": "parity", "seed": args.seeds[0], "steps": train.max_steps,
        "max_abs_train_loss_diff_first_100_steps": float(diffs[:100].max()),
        "max_abs_train_loss_diff": float(diffs.max()),
        "median_abs_train_loss_diff_last_500_steps": float(np.median(diffs[-500:])),
        "val_loss_estimate_at_2000": {"keras": curve[-1]["keras_val"], "torch": curve[-1]["torch_val"]},
        "full_val_loss": {"keras": learners["keras"].loss(vx, vy), "torch": learners["torch"].loss(vx, vy)},
        "val_windows": int(len(vx)), "curve": curve,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=2))
    return result


def seeds(args):
    """The reference alone, exactly as nanoGPT trains, for each seed in `args.seeds`."""
    config = recipe()
    train, model = config.train, config.model
    data = NanoGPTData(SHAKESPEARE, model.block_size, train.batch_size)
    vx, vy = data.val_windows()
    runs = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        learner = TorchLearner(TorchGPT(len(data.chars), model.block_size, model.n_layer, model.n_head, model.n_embd),
                               train, nanogpt_lr(train))
        started = time.perf_counter()
        curve, _ = nanogpt_loop(data, {"torch": learner}, train)
        wall = time.perf_counter() - started
        run = {"seed": seed, "val_loss_estimate_at_2000": curve[-1]["torch_val"],
               "train_loss_estimate_at_2000": curve[-1]["torch_train"], "full_val_loss": learner.loss(vx, vy),
               "tokens_per_second": train.max_steps * train.batch_size * model.block_size / wall,
               "wall_seconds": wall, "curve": curve}
        print(json.dumps({k: v for k, v in run.items() if k != "curve"}), flush=True)
        runs.append(run)
    result = {"mode": "seeds", "runs": runs,
              "median_full_val_loss": statistics.median(r["full_val_loss"] for r in runs),
              "median_val_loss_estimate_at_2000": statistics.median(r["val_loss_estimate_at_2000"] for r in runs)}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return result


def noise(args):
    """How far one nanoGPT-style estimate (20 random batches of 12 windows) strays from the loss
    over every validation window, for the model of a kerasllm run directory."""
    import keras
    import tensorflow as tf
    from kerasllm.training.run import load_run, prepare_data

    config, tokenizer, model = load_run(args.run)
    val = np.asarray(prepare_data(config, tokenizer=tokenizer, log=lambda *a: None).val_ids).astype("int32")
    block, batch = config.model.block_size, config.train.batch_size

    @tf.function(jit_compile=True)
    def window_losses(x, y):
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True), axis=1)

    per_window = []  # mean loss of the window starting at each position
    for first in range(0, len(val) - block, 2048):
        starts = np.arange(first, min(first + 2048, len(val) - block))
        x = np.stack([val[s:s + block] for s in starts])
        y = np.stack([val[s + 1:s + 1 + block] for s in starts])
        per_window.append(np.asarray(window_losses(x, y)))
    per_window = np.concatenate(per_window)
    rng = np.random.default_rng(0)
    estimates = [per_window[rng.integers(0, len(per_window), 20 * batch)].mean() for _ in range(args.draws)]
    result = {"mode": "noise", "run": str(args.run), "loss_over_every_window": float(per_window.mean()),
              "estimates": args.draws, "estimate_mean": float(np.mean(estimates)),
              "estimate_sd": float(np.std(estimates)),
              "estimate_5_95_percentiles": [float(v) for v in np.percentile(estimates, [5, 95])]}
    print(json.dumps(result, indent=2))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("parity", "seeds", "noise"), default="parity")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2, 3, 4, 5, 6, 7],
                        help="torch seeds (parity uses the first)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", type=pathlib.Path, help="noise: a shakespeare_char_cpu run directory")
    parser.add_argument("--draws", type=int, default=2000, help="noise: estimates drawn")
    args = parser.parse_args()
    if not SHAKESPEARE.exists():
        sys.exit(f"{SHAKESPEARE} not found: set KERASLLM_SHARED_DATA to the folder holding tinyshakespeare/")
    torch.set_num_threads(args.threads)
    if args.mode == "noise" and args.run is None:
        sys.exit("--mode noise needs --run RUN_DIR (a shakespeare_char_cpu run directory)")
    result = {"parity": parity, "seeds": seeds, "noise": noise}[args.mode](args)
    out = HERE / f"nanogpt_{args.mode}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
