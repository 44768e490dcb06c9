"""Callbacks for interactive training: a live loss plot and a wall-clock budget.

Both are plain Keras callbacks: pass them to `kerasllm.training.pretrain(..., callbacks=[...])`
or to `model.fit`. `LiveLossPlot` redraws in a Jupyter kernel and only records elsewhere.

    from kerasllm.training.live import LiveLossPlot, TimeBudget
"""

import io
import math
import time

import keras
from keras import ops


def _ipython_display():
    """`IPython.display.display` when running under an IPython kernel, else `None`."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    shell = get_ipython()
    return display if shell is not None and hasattr(shell, "kernel") else None


class LiveLossPlot(keras.callbacks.Callback):
    """Records the loss of every step (and the validation loss) and redraws a plot while training.

    Keras reports the running mean of the epoch in `on_train_batch_end`; the loss of step `i`
    is recovered exactly from consecutive means. The callback also records wall time, tokens
    seen, the learning rate and, for kerasllm optimizers, the global gradient norm, so the same
    history gives loss-vs-time, loss-vs-tokens and gradient-norm plots. Outside a Jupyter
    kernel it only records.

    Args:
        tokens_per_step: tokens in one optimizer step (batch size x context).
        every: redraw every this many steps.
        title: the plot title.
        smoothing: exponential-moving-average factor of the drawn training curve.

    Examples:

    >>> plot = LiveLossPlot(tokens_per_step=12 * 64, every=50, title="char GPT")
    >>> plot.history["loss"]
    []
    """

    def __init__(self, tokens_per_step, every=25, title="training loss", smoothing=0.9):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.every = max(1, every)
        self.title = title
        self.smoothing = smoothing
        self.history = {key: [] for key in (
            "step", "seconds", "tokens", "loss", "learning_rate", "grad_norm",
            "val_step", "val_seconds", "val_tokens", "val_loss",
        )}
        self._display = _ipython_display()
        self._handle = None
        self._start = None
        self._previous_mean = 0.0

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._previous_mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "loss" not in logs:
            return
        mean = float(logs["loss"])
        loss = (batch + 1) * mean - batch * self._previous_mean  # undo the running mean
        self._previous_mean = mean
        step = self._step()
        h = self.history
        h["step"].append(step)
        h["seconds"].append(time.perf_counter() - self._start)
        h["tokens"].append(step * self.tokens_per_step)
        h["loss"].append(loss)
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        h["learning_rate"].append(float(ops.convert_to_numpy(optimizer.learning_rate)))
        norm = getattr(optimizer, "grad_norm", None)
        h["grad_norm"].append(float(ops.convert_to_numpy(norm)) if norm is not None else math.nan)
        if step % self.every == 0:
            self.draw()

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            step = self._step()
            h = self.history
            h["val_step"].append(step)
            h["val_seconds"].append(time.perf_counter() - self._start)
            h["val_tokens"].append(step * self.tokens_per_step)
            h["val_loss"].append(float(logs["val_loss"]))
            self.draw()

    def on_train_end(self, logs=None):
        self.draw()

    def smoothed_loss(self):
        """The training loss as an exponential moving average (bias-corrected)."""
        out, average = [], 0.0
        for i, value in enumerate(self.history["loss"], start=1):
            average = self.smoothing * average + (1 - self.smoothing) * value
            out.append(average / (1 - self.smoothing**i))
        return out

    def figure(self):
        """The loss plot as a `matplotlib.figure.Figure` (not registered with pyplot)."""
        from matplotlib.figure import Figure

        figure = Figure(figsize=(7, 3.6), layout="constrained")
        axes = figure.subplots()
        h = self.history
        axes.plot(h["step"], h["loss"], color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        axes.plot(h["step"], self.smoothed_loss(), color="tab:blue", label="train (smoothed)")
        if h["val_loss"]:
            axes.plot(h["val_step"], h["val_loss"], "o-", color="tab:orange", label="validation")
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("cross-entropy loss (nats/token)")
        last = f" - step {h['step'][-1]}, loss {self.smoothed_loss()[-1]:.3f}" if h["step"] else ""
        axes.set_title(self.title + last)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper right")
        return figure

    def png(self):
        """The loss plot as PNG bytes."""
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()

    def draw(self):
        if self._display is None or not self.history["step"]:
            return
        # PNG bytes rather than the Figure: a Figure only renders once pyplot's inline backend
        # has registered its formatter, which has not happened before the first pyplot figure.
        from IPython.display import Image

        image = Image(data=self.png(), format="png")
        if self._handle is None:
            self._handle = self._display(image, display_id=True)
        else:
            self._handle.update(image)


class TimeBudget(keras.callbacks.Callback):
    """Stops training after `seconds` of training, counted from the end of the first step so
    that tracing and compilation do not eat the budget (validation time is included).

    Examples:

    >>> TimeBudget(60).seconds
    60
    """

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._start is None:
            self._start = now
        elif now - self._start >= self.seconds:
            self.model.stop_training = True
