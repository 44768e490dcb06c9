"""What the notebooks need beyond the library: Colab, data and run paths, live plots, attention.

The notebooks in `notebooks/` stay thin: every step is a kerasllm call, and the few things a
notebook needs that a script does not (a live loss plot, a time budget, attention
probabilities for heat-maps, "use the shared corpora when they are there") live here.

    from kerasllm.notebook import LiveLossPlot, resolve_corpus, run_directory
"""

import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kerasllm.errors import DataError

REPO_ROOT = Path(__file__).resolve().parent.parent

# Shared-corpus files by registered dataset name (paths relative to the shared data folder).
SHARED_FILES = {
    "tinyshakespeare": "tinyshakespeare/input.txt",
    "wikitext-2": "wikitext-2/train.txt",
}


def in_colab():
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def smoke_mode():
    """True when `KERASLLM_SMOKE=1`: CI runs every notebook with tiny sizes."""
    return os.environ.get("KERASLLM_SMOKE") == "1"


def shared_data_dir():
    """`$KERASLLM_SHARED_DATA`, else `../shared/data` beside the repository root, or `None`."""
    env = os.environ.get("KERASLLM_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def shared_file(relative, required=True):
    """A file of the shared corpora, e.g. `shared_file("chinese/hongloumeng.txt")`.

    Args:
        relative: path inside the shared data folder.
        required: raise a `DataError` when missing (else return `None`).

    Examples:

    >>> shared_file("no/such/file.txt", required=False) is None
    True
    """
    root = shared_data_dir()
    path = root / relative if root else None
    if path is not None and path.is_file():
        return path
    if not required:
        return None
    where = root or REPO_ROOT.parent / "shared" / "data"
    raise DataError(
        f"{relative}: not found under {where}; set KERASLLM_SHARED_DATA to the folder that "
        f"holds it (see its SOURCE.md) or pass the path of your own copy"
    )


def resolve_corpus(name="tinyshakespeare", log=print):
    """What to put in `data.dataset`: the shared copy, else the download, else the built-in corpus.

    Args:
        name: a registered dataset (`tinyshakespeare`, `wikitext-2`) or `python-stdlib`.
        log: prints which source was chosen.

    Returns:
        A file path or dataset name for `kerasllm.data.load_corpus`.

    Examples:

    >>> resolve_corpus("python-stdlib", log=lambda line: None)
    'python-stdlib'
    """
    if name == "python-stdlib":
        return name
    relative = SHARED_FILES.get(name)
    path = shared_file(relative, required=False) if relative else None
    if path is not None:
        log(f"data: {name} from the shared corpora, {path}")
        return str(path)
    from kerasllm.data.corpus import REGISTERED_DATASETS, fetch_registered

    if name not in REGISTERED_DATASETS:
        raise DataError(f"{name!r}: not a registered dataset (known: python-stdlib, {', '.join(REGISTERED_DATASETS)})")
    try:
        path = fetch_registered(name)
    except DataError as error:
        log(f"data: {error}\ndata: falling back to the built-in python-stdlib corpus")
        return "python-stdlib"
    log(f"data: {name} from {path}")
    return str(path)


def head_lines(path, lines, directory=None):
    """The first `lines` lines of a text file (a header line counts as one) as a new file, for
    shrinking a data set in smoke runs; `path` itself when `lines` is None.

    Examples:

    >>> import pathlib, tempfile
    >>> source = pathlib.Path(tempfile.mkdtemp()) / "train.tsv"
    >>> _ = source.write_text("sentence\\tlabel\\na\\t1\\nb\\t0\\nc\\t1\\n")
    >>> head_lines(source, 3).read_text()
    'sentence\\tlabel\\na\\t1\\nb\\t0\\n'
    """
    path = Path(path)
    if lines is None:
        return path
    directory = Path(directory or tempfile.mkdtemp(prefix="kerasllm-head-"))
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{path.stem}.head{lines}{path.suffix}"
    with open(path, encoding="utf-8") as source, open(target, "w", encoding="utf-8") as out:
        for index, line in enumerate(source):
            if index >= lines:
                break
            out.write(line)
    return target


def run_directory(name):
    """Where a notebook writes run `name`: `$KERASLLM_RUNS/<name>`, else
    `saved_models/notebooks/<name>` in a source checkout, else a temporary folder."""
    if os.environ.get("KERASLLM_RUNS"):
        root = Path(os.environ["KERASLLM_RUNS"])
    elif (REPO_ROOT / "pyproject.toml").is_file():
        root = REPO_ROOT / "saved_models" / "notebooks"  # ignored by git
    else:
        root = Path(tempfile.gettempdir()) / "kerasllm-notebooks"
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def attention_maps(model, token_ids):
    """Attention probabilities of every layer and head of a `kerasllm.models.GPT`.

    The model attends through the fused `keras.ops.dot_product_attention`, which never
    materializes the probabilities; this recomputes them from each block's own QKV projection
    (and rotary embedding): `softmax(q k^T / sqrt(d) + causal mask)`.

    Args:
        model: a built `GPT`.
        token_ids: int array `(batch, time)`.

    Returns:
        float32 numpy array `(batch, n_layer, n_head, time, time)`; row `i` of a map is how
        query position `i` spreads its attention over key positions `0..i`.

    Examples:

    >>> from kerasllm.models import GPT
    >>> model = GPT(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16)
    >>> attention_maps(model, np.zeros((1, 8), "int32")).shape
    (1, 2, 2, 8, 8)
    """
    token_ids = ops.convert_to_tensor(token_ids, "int32")
    if not model.built:
        model.build(tuple(ops.shape(token_ids)))
    x = model._embed(token_ids)
    time_steps = ops.shape(token_ids)[1]
    causal = ops.tril(ops.ones((time_steps, time_steps), "bool"))
    maps = []
    for block in model.blocks:
        attn = block.attn
        h = block.norm_1(x)
        batch = ops.shape(h)[0]
        H, K, D = attn.n_head, attn.n_kv_head, attn.head_dim
        qkv = attn.qkv(h)
        q = ops.reshape(qkv[..., : H * D], (batch, time_steps, H, D))
        k = ops.reshape(qkv[..., H * D : (H + K) * D], (batch, time_steps, K, D))
        if attn.rotary is not None:
            q, k = attn.rotary(q), attn.rotary(k)
        k = attn._repeat_kv(k)
        scores = ops.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
        scores = ops.where(causal[None, None], ops.cast(scores, "float32"), -1e9)
        maps.append(ops.softmax(scores, axis=-1))
        x = block(x)
    return ops.convert_to_numpy(ops.stack(maps, axis=1))


def gradient_norms(model, token_ids, targets):
    """L2 norm of the loss gradient for each top-level part of a model (embeddings, each block,
    the final norm), on one batch.

    Args:
        model: a built Keras language model returning logits.
        token_ids: int array `(batch, time)`.
        targets: int array `(batch, time)` of next tokens.

    Returns:
        `(loss, {part name: gradient norm})`, in the model's layer order.

    Examples:

    >>> from kerasllm.models import GPT
    >>> model = GPT(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16)
    >>> ids = np.ones((2, 8), "int32")
    >>> loss, norms = gradient_norms(model, ids, ids)
    >>> list(norms)
    ['token_embedding', 'position_embedding', 'block_0', 'block_1', 'final_norm']
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if not model.built:
        model.build(tuple(np.shape(token_ids)))
    variables = model.trainable_variables
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(targets, model(token_ids, training=False))
        grads = tape.gradient(loss, variables)
    elif backend == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def compute(trainable):
            logits, _ = model.stateless_call(trainable, non_trainable, token_ids, training=False)
            return loss_fn(targets, logits)

        loss, grads = jax.value_and_grad(compute)([v.value for v in variables])
    else:
        raise NotImplementedError(f"gradient_norms supports the tensorflow and jax backends, not {backend}")
    squares = {}
    for variable, grad in zip(variables, grads):
        if grad is None:
            continue
        part = variable.path.split("/")[1] if variable.path.count("/") >= 1 else variable.path
        squares[part] = squares.get(part, 0.0) + float(ops.convert_to_numpy(ops.sum(ops.square(grad))))
    return float(ops.convert_to_numpy(loss)), {part: math.sqrt(value) for part, value in squares.items()}
