"""Training callbacks: checkpoints that survive crashes, logs, throughput/MFU, NaN and Ctrl-C
guards, plateau and early stopping.

All step counting goes through `RunState`: `batches` is the number of (micro-)batches the model
has consumed, i.e. the data-iterator position, and `step = batches // grad_accum_steps` is the
optimizer step. A checkpoint stores both, so a resumed run continues with the exact batch the
interrupted one would have seen next.
"""

import csv
import dataclasses
import math
import time
from pathlib import Path

import keras
import numpy as np

from kerasllm.training.optimizers import inner_optimizer

PROGRESS_ONLY_KEYS = ("tokens/s", "last_val_loss")
LOG_COLUMNS = (
    "step", "loss", "val_loss", "perplexity", "val_perplexity", "learning_rate", "grad_norm",
    "tokens_per_second", "model_flops_per_second", "mfu", "time",
)


def rng_state(model):
    """The states of the model's seed generators (dropout), by variable path."""
    return {v.path: np.asarray(v.numpy()).tolist() for v in model.variables if "seed_generator_state" in v.path}


def set_rng_state(model, state):
    for v in model.variables:
        if v.path in state:
            v.assign(np.asarray(state[v.path], dtype=v.dtype))


class RunState(keras.callbacks.Callback):
    """Counts consumed batches; the single source of `step` and the data position.

    Put it first in the callback list so the others see the updated count.
    """

    def __init__(self, batches=0, accum=1, tokens_per_batch=0, max_steps=None):
        super().__init__()
        self.batches = batches
        self.accum = accum
        self.tokens_per_batch = tokens_per_batch
        self.max_steps = max_steps
        self._first = None  # index of the execution's first batch (steps_per_execution > 1)

    @property
    def step(self):
        return self.batches // self.accum

    def on_train_batch_begin(self, batch, logs=None):
        self._first = batch

    def on_train_batch_end(self, batch, logs=None):
        # Keras calls this once per execution of `steps_per_execution` batches, with `batch`
        # the index of its last one.
        self.batches += 1 if self._first is None else batch - self._first + 1
        self._first = None
        if self.max_steps is not None and self.batches >= self.max_steps * self.accum:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        # Keras builds epoch logs from the last batch's: drop the progress-bar-only keys.
        for key in PROGRESS_ONLY_KEYS:
            (logs or {}).pop(key, None)


class NaNGuard(keras.callbacks.Callback):
    """Stops at the first non-finite training loss and remembers the step (`bad_step`)."""

    def __init__(self, state):
        super().__init__()
        self.state = state
        self.bad_step = None
        self.bad_value = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.bad_step is None:
            self.bad_step, self.bad_value = self.state.step, float(loss)
            self.model.stop_training = True


class Interrupt(keras.callbacks.Callback):
    """Stops after the current batch once `requested` is set (by a SIGINT handler)."""

    def __init__(self):
        super().__init__()
        self.requested = False

    def request(self, *_):
        self.requested = True

    def on_train_batch_end(self, batch, logs=None):
        if self.requested:
            self.model.stop_training = True


class _ValLossWatcher(keras.callbacks.Callback):
    """Base of callbacks acting on evaluations without improvement; state survives resume."""

    def __init__(self, patience, min_delta=0.0):
        super().__init__()
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.wait = 0

    def get_state(self):
        return {"best": self.best, "wait": self.wait}

    def set_state(self, state):
        self.best, self.wait = float(state["best"]), int(state["wait"])

    def on_epoch_end(self, epoch, logs=None):
        val_loss = (logs or {}).get("val_loss")
        if val_loss is None or self.patience <= 0:
            return
        if val_loss < self.best - self.min_delta:
            self.best, self.wait = float(val_loss), 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.wait = 0
            self.stalled(float(val_loss))


class ReduceOnPlateau(_ValLossWatcher):
    """Multiplies the optimizer's learning rate by `factor` after `patience` evaluations
    without a lower val loss (Keras' `ReduceLROnPlateau` acts per epoch, which here is not
    always an evaluation)."""

    def __init__(self, optimizer, factor=0.5, patience=2, min_lr=0.0, log=print):
        super().__init__(patience)
        self.optimizer, self.factor, self.min_lr, self.log = optimizer, factor, min_lr, log

    def stalled(self, val_loss):
        old = float(np.asarray(self.optimizer.learning_rate))
        new = max(old * self.factor, self.min_lr)
        self.optimizer.learning_rate.assign(new)
        self.log(f"\nplateau: val loss {val_loss:.4f} not below {self.best:.4f} for "
                 f"{self.patience} evaluations; learning rate {old:.3g} -> {new:.3g}")


class EarlyStop(_ValLossWatcher):
    """Stops training after `patience` evaluations without a lower val loss."""

    def __init__(self, state, patience, log=print):
        super().__init__(patience)
        self.state, self.log = state, log
        self.stopped_at = None

    def stalled(self, val_loss):
        self.stopped_at = self.state.step
        self.model.stop_training = True
        self.log(f"\nearly stopping at step {self.state.step}: val loss {val_loss:.4f} not below "
                 f"{self.best:.4f} for {self.patience} evaluations")


class Checkpointer(keras.callbacks.Callback):
    """Saves model + optimizer every `every` optimizer steps, keeps the `keep` newest and the
    best by val loss.

    A checkpoint is `ckpt-<step>.keras` (weights and optimizer state, including the step
    counter the schedule reads) plus `ckpt-<step>.json` (step, data position, RNG state of the
    dropout seed generators, plateau/early-stopping state, losses). Each file is written to a
    temporary name and renamed; `latest.json` (a copy of the newest `.json`) is replaced last,
    so a crash at any moment leaves the previous checkpoint complete. A non-finite loss is
    never checkpointed.
    """

    def __init__(self, run, state, every, keep=2, keep_best=True, stateful=(), guard=None, enabled=True):
        super().__init__()
        self.run = run  # a kerasllm.training.rundir.RunDir
        self.state = state
        self.every = every
        self.keep = max(1, keep)
        self.keep_best = keep_best
        self.stateful = dict(stateful)  # name -> callback with get_state/set_state
        self.guard = guard
        self.enabled = enabled
        self.best_val_loss = math.inf
        self.last_saved = None
        self._loss = None
        self.last_val_loss = None

    def info(self, file):
        info = {
            "file": file, "step": self.state.step, "batches": self.state.batches,
            "time": time.time(), "loss": self.last_loss, "val_loss": self.last_val_loss,
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "rng": rng_state(self.model),
            "callbacks": {name: cb.get_state() for name, cb in self.stateful.items()},
        }
        return info

    def restore(self, info):
        """Restores RNG and callback state from a checkpoint's `info`."""
        set_rng_state(self.model, info.get("rng", {}))
        for name, cb_state in info.get("callbacks", {}).items():
            if name in self.stateful:
                self.stateful[name].set_state(cb_state)
        best = info.get("best_val_loss")
        self.best_val_loss = math.inf if best is None else best
        self.last_saved = info["batches"]

    def save(self):
        if not self.enabled or self.last_saved == self.state.batches:
            return None
        if self.guard is not None and self.guard.bad_step is not None:
            return None
        # A name suffix counts the micro-batches of an accumulation interrupted mid-way.
        path = self.run.checkpoint_path(self.state.step, self.state.batches % self.state.accum)
        self.run.write_checkpoint(self.model, self.info(path.name), keep=self.keep)
        self.last_saved = self.state.batches
        return path

    @property
    def last_loss(self):
        return None if self._loss is None else float(self._loss)

    def on_train_batch_end(self, batch, logs=None):
        # Kept as the tensor and read when a checkpoint is written: no host sync per step.
        self._loss = (logs or {}).get("loss", math.nan)

    def on_epoch_end(self, epoch, logs=None):
        # Epochs end on multiples of `every` (see `pretrain`); this runs after the evaluation
        # and after `RunLog` wrote the row, so a checkpoint never precedes its log row.
        val_loss = (logs or {}).get("val_loss")
        if val_loss is not None:
            self.last_val_loss = float(val_loss)
            if self.enabled and self.keep_best and math.isfinite(val_loss) and val_loss < self.best_val_loss:
                self.best_val_loss = float(val_loss)
                self.run.write_best(self.model, self.info(self.run.best_path.name))
        if self.state.batches % (self.every * self.state.accum) == 0:
            self.save()


class Throughput(keras.callbacks.Callback):
    """Tokens per second of training, model FLOP/s and MFU.

    Epoch rates exclude validation and the first (compiling) epoch; the progress bar gets a
    running rate. `flops_per_token` (from `kerasllm.plan.flops_per_token`) and `peak_flops`
    turn tokens/s into model FLOP/s and MFU.
    """

    def __init__(self, state, flops_per_token=None, peak_flops=None):
        super().__init__()
        self.state = state
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.epochs = []  # (batches, seconds) per epoch
        self._start = self._start_batches = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._start_batches = self.state.batches

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None and self._start is not None:
            seconds = time.perf_counter() - self._start
            if seconds > 0:
                logs["tokens/s"] = (self.state.batches - self._start_batches) * self.state.tokens_per_batch / seconds

    def on_test_begin(self, logs=None):
        if self._start is not None:
            self.epochs.append((self.state.batches - self._start_batches, time.perf_counter() - self._start))
            self._start = None

    def on_epoch_end(self, epoch, logs=None):
        if self._start is not None:  # no validation this epoch
            self.on_test_begin()
        if logs is not None and self.epochs:
            logs.update(self.rates())

    def tokens_per_second(self):
        measured = self.epochs[1:] or self.epochs  # epoch 0 includes tracing and compilation
        batches = sum(b for b, _ in measured)
        seconds = sum(t for _, t in measured)
        return batches * self.state.tokens_per_batch / seconds if seconds > 0 else 0.0

    def rates(self):
        rates = {"tokens_per_second": self.tokens_per_second()}
        if self.flops_per_token:
            rates["model_flops_per_second"] = rates["tokens_per_second"] * self.flops_per_token
            if self.peak_flops:
                rates["mfu"] = rates["model_flops_per_second"] / self.peak_flops
        return rates


class RunLog(keras.callbacks.Callback):
    """Completes each epoch's logs (lr, grad norm, perplexities) for TensorBoard, and writes
    `log.csv` with fixed columns (`LOG_COLUMNS`); also shows the last val loss in the
    progress bar.

    Rows are written every `every` steps (the Keras epoch) and at the last step. On resume,
    rows past the resumed step (logged by a run that crashed before its next checkpoint) are
    dropped, so the CSV has one row per interval; after a resume inside an interval (Ctrl-C),
    that interval's `loss` averages only the batches after the resume.
    """

    def __init__(self, path, state, optimizer, resume_step=0, every=1):
        super().__init__()
        self.path = Path(path)
        self.state = state
        self.every = every
        self.optimizer = optimizer
        self.val_loss = None
        self.started = time.time()
        rows = read_log(self.path) if resume_step else []
        self._write_rows([r for r in rows if int(float(r["step"])) <= resume_step], mode="w")

    def _write_rows(self, rows, mode="a"):
        with open(self.path, mode, newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, restval="")
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)

    def learning_rate(self):
        return float(np.asarray(inner_optimizer(self.optimizer).learning_rate))

    def grad_norm(self):
        variable = getattr(inner_optimizer(self.optimizer), "grad_norm", None)
        return None if variable is None else float(np.asarray(variable))

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None and self.val_loss is not None:
            logs["last_val_loss"] = self.val_loss

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if "val_loss" in logs:
            self.val_loss = float(logs["val_loss"])
            logs["val_perplexity"] = math.exp(min(self.val_loss, 700))
        if "loss" in logs:
            logs["perplexity"] = math.exp(min(float(logs["loss"]), 700))
        logs["learning_rate"] = self.learning_rate()
        norm = self.grad_norm()
        if norm is not None:
            logs["grad_norm"] = norm
        at_end = self.state.max_steps is not None and self.state.step >= self.state.max_steps
        if self.state.step % self.every and not at_end:
            return  # stopped inside an interval (Ctrl-C, NaN): its row comes when it is complete
        row = {k: logs[k] for k in LOG_COLUMNS if k in logs}
        row.update(step=self.state.step, time=round(time.time() - self.started, 3))
        self._write_rows([row])


def read_log(path):
    """Rows of a `log.csv` as dicts of strings ([] if there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclasses.dataclass
class TrainingCallbacks:
    """The callbacks of a pretraining run, by role; `ordered()` is the list given to `fit`."""

    state: RunState
    guard: NaNGuard
    interrupt: Interrupt
    throughput: Throughput
    watchers: dict  # name -> ReduceOnPlateau / EarlyStop (state saved in checkpoints)
    log: "RunLog"
    checkpointer: Checkpointer
    tensorboard: keras.callbacks.Callback
    extra: list = dataclasses.field(default_factory=list)

    def ordered(self):
        callbacks = [
            self.state, self.guard, self.interrupt, self.throughput, *self.watchers.values(),
            *self.extra, self.log, self.checkpointer, self.tensorboard,
        ]
        check_order(callbacks)
        return callbacks


def check_order(callbacks):
    """Asserts the order the run's callbacks rely on (Keras calls them in list order).

    * `RunState` first: it advances `step`, which every other callback reads, and drops the
      progress-bar-only keys from the epoch logs before anything logs them.
    * `Throughput` before `RunLog`: it adds the rates that `RunLog` writes.
    * `RunLog` before `Checkpointer`: a checkpoint never exists without its log row.
    * TensorBoard after `RunLog`: it sees the completed logs (learning rate, perplexities).

    Raises:
        ValueError: naming the rule that `callbacks` breaks.
    """
    kinds = [type(c) for c in callbacks]

    def at(kind):
        return kinds.index(kind) if kind in kinds else None

    if at(RunState) != 0:
        raise ValueError("RunState must be the first callback (it advances the step the others read)")
    rules = [
        (Throughput, RunLog, "Throughput must come before RunLog (RunLog writes its rates)"),
        (RunLog, Checkpointer, "RunLog must come before Checkpointer (no checkpoint without its log row)"),
        (RunLog, keras.callbacks.TensorBoard, "RunLog must come before TensorBoard (it completes the logs)"),
    ]
    for first, second, message in rules:
        if at(first) is not None and at(second) is not None and at(first) > at(second):
            raise ValueError(message)


def make_callbacks(run, model, train, state, resume_info=None, flops=(None, None), extra=(), log=print):
    """Builds the run's callbacks in the order `check_order` requires.

    Args:
        run: the `RunDir`.
        model: the compiled model (its optimizer is watched and checkpointed).
        train: the `TrainConfig`.
        state: the run's `RunState` (its `batches` is the resume position).
        resume_info: the resumed checkpoint's info (RNG and callback state), or None.
        flops: `(flops_per_token, peak_flops)` for the MFU columns.
        extra: the caller's callbacks (e.g. a live plot), run after the built-in ones.
        log: printer for plateau / early-stopping messages.

    Returns:
        `TrainingCallbacks`.
    """
    every = train.checkpoint_every or train.eval_interval
    guard = NaNGuard(state)
    watchers = {}
    if train.schedule == "plateau":
        watchers["plateau"] = ReduceOnPlateau(
            inner_optimizer(model.optimizer), train.plateau_factor, train.plateau_patience, train.min_lr, log=log
        )
    if train.early_stop_patience:
        watchers["early_stop"] = EarlyStop(state, train.early_stop_patience, log=log)
    checkpointer = Checkpointer(
        run, state, every, keep=train.keep_checkpoints, keep_best=train.keep_best, stateful=watchers, guard=guard
    )
    checkpointer.set_model(model)
    if resume_info:
        checkpointer.restore(resume_info)
    return TrainingCallbacks(
        state=state, guard=guard, interrupt=Interrupt(), throughput=Throughput(state, *flops),
        watchers=watchers, extra=list(extra),
        log=RunLog(run.log_path, state, model.optimizer, resume_step=state.step, every=math.gcd(train.eval_interval, every)),
        checkpointer=checkpointer,
        tensorboard=keras.callbacks.TensorBoard(
            log_dir=str(run.tensorboard_dir), update_freq=train.log_every or "epoch", write_graph=False
        ),
    )
