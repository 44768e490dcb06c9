"""Training callbacks: atomic checkpoints, throughput and the step limit."""

import json
import os
import time
from pathlib import Path

import keras

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"


def write_json_atomic(path, payload):
    """Writes JSON so a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model_atomic(model, path):
    """`model.save(path)` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".partial.keras")
    model.save(tmp)
    os.replace(tmp, path)


def latest_checkpoint(run_dir):
    """`(path, info)` of the newest complete checkpoint in `run_dir`, or `(None, None)`."""
    latest = Path(run_dir) / CHECKPOINT_DIR / LATEST_FILE
    if not latest.is_file():
        return None, None
    info = json.loads(latest.read_text(encoding="utf-8"))
    path = latest.parent / info["file"]
    return (path, info) if path.is_file() else (None, None)


class Checkpointer(keras.callbacks.Callback):
    """Saves the whole model (weights + optimizer state) every `every` steps and at the end.

    Each checkpoint is written to a temporary file and renamed into place, then
    `checkpoints/latest.json` is replaced atomically, so a crash at any moment leaves the
    previous checkpoint usable. Only the `keep` newest checkpoints are kept.
    """

    def __init__(self, run_dir, every, keep=2):
        super().__init__()
        self.folder = Path(run_dir) / CHECKPOINT_DIR
        self.every = every
        self.keep = max(1, keep)

    def step(self):
        return int(self.model.optimizer.iterations.numpy())

    def save(self, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        step = self.step()
        name = f"ckpt-{step:07d}.keras"
        save_model_atomic(self.model, self.folder / name)
        info = {"file": name, "step": step, "time": time.time()}
        info.update({k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))})
        write_json_atomic(self.folder / LATEST_FILE, info)
        for old in sorted(self.folder.glob("ckpt-*.keras"))[: -self.keep]:
            old.unlink()

    def on_epoch_end(self, epoch, logs=None):
        if self.step() % self.every == 0 or self.model.stop_training:
            self.save(logs)


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the optimizer has taken `max_steps` steps."""

    def __init__(self, max_steps):
        super().__init__()
        self.max_steps = max_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.max_steps:
            self.model.stop_training = True


class Throughput(keras.callbacks.Callback):
    """Measures training tokens per second, excluding validation and the first (compiling) epoch.

    Adds `tokens_per_second` to the epoch logs (so it reaches History, the CSV log and
    TensorBoard) and keeps totals for `metrics.json`.
    """

    def __init__(self, tokens_per_step):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.epochs = []  # (steps, seconds) per epoch
        self._start = self._start_step = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._start_step = int(self.model.optimizer.iterations.numpy())

    def on_test_begin(self, logs=None):
        if self._start is not None:
            steps = int(self.model.optimizer.iterations.numpy()) - self._start_step
            self.epochs.append((steps, time.perf_counter() - self._start))
            self._start = None

    def on_epoch_end(self, epoch, logs=None):
        if self._start is not None:  # no validation this epoch
            self.on_test_begin()
        if logs is not None and self.epochs:
            logs["tokens_per_second"] = self.tokens_per_second()

    def tokens_per_second(self):
        measured = self.epochs[1:] or self.epochs  # epoch 0 includes tracing and compilation
        steps = sum(s for s, _ in measured)
        seconds = sum(t for _, t in measured)
        return steps * self.tokens_per_step / seconds if seconds > 0 else 0.0
