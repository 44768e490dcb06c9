"""The run directory: its layout, atomic writes, checkpoints, a writer's lock and what run it holds.

Every file of a run lives here and nowhere else spells a file name:

    run.json             what the run is: kind (lm, classifier, sft) and fingerprints of the
                         model config, the tokenizer and the data, so resume can refuse a mismatch
    config.toml          the resolved config
    tokenizer/           the run's tokenizer
    checkpoints/         ckpt-<step>.keras (model + optimizer) with ckpt-<step>.json (step, data
                         position, RNG and callback state), latest.json, best.keras + best.json
    logs/                TensorBoard event files
    log.csv              one row per evaluation / checkpoint boundary
    curves.png           train/val loss and learning rate against step
    model.keras          the final model
    metrics.json         final losses, throughput and sizes
    finetune.json        fine-tuned runs: the task, the source run and the labels
    eval/                what `evaluate` wrote
    .lock                held (fcntl) by the process writing the run; the kernel drops it when
                         that process dies, so a kill -9 never leaves a run locked

Every write goes to a temporary name and is renamed into place, so a crash at any moment leaves
either the old file or the new one. Every file read back is checked: a damaged checkpoint is
named as damaged and the newest intact one is used instead.

Examples:

>>> import tempfile
>>> run = RunDir(tempfile.mkdtemp())
>>> run.model_path.name, run.checkpoint_path(120).name
('model.keras', 'ckpt-0000120.keras')
>>> run.write_json(run.metrics_path, {"val_loss": 1.5})
>>> run.read_json(run.metrics_path)
{'val_loss': 1.5}
"""

import fcntl
import json
import os
import shutil
import zipfile
from pathlib import Path

from kerasllm.errors import RunError

KINDS = ("lm", "classifier", "sft")


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
    try:
        model.save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_keras_file(path):
    """Raises `RunError` naming `path` unless it is a complete `.keras` archive."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise RunError(f"{path}: damaged (not a complete .keras archive: {error})") from None
    if bad is not None:
        raise RunError(f"{path}: damaged (member {bad} fails its checksum)")


def load_keras_model(path, compile=False):
    """`keras.models.load_model` that names a missing or damaged file instead of a traceback."""
    import keras

    # Import every module that registers a class a saved run may hold, so load_model finds it.
    import kerasllm.models.classifier  # noqa: F401
    import kerasllm.models.gpt  # noqa: F401
    import kerasllm.models.lstm  # noqa: F401
    import kerasllm.training.optimizers  # noqa: F401

    check_keras_file(path)
    try:
        return keras.models.load_model(path, compile=compile)
    except (ValueError, OSError, KeyError) as error:
        raise RunError(f"{path}: cannot be loaded ({error})") from None


class RunDir:
    """One run directory (see the module docstring for its layout).

    Args:
        path: the directory; it need not exist yet.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._lock_file = None

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"

    # --- layout ----------------------------------------------------------------------------
    run_path = property(lambda self: self.path / "run.json")
    config_path = property(lambda self: self.path / "config.toml")
    tokenizer_dir = property(lambda self: self.path / "tokenizer")
    model_path = property(lambda self: self.path / "model.keras")
    metrics_path = property(lambda self: self.path / "metrics.json")
    finetune_path = property(lambda self: self.path / "finetune.json")
    log_path = property(lambda self: self.path / "log.csv")
    plot_path = property(lambda self: self.path / "curves.png")
    tensorboard_dir = property(lambda self: self.path / "logs")
    eval_dir = property(lambda self: self.path / "eval")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")
    latest_path = property(lambda self: self.checkpoint_dir / "latest.json")
    best_path = property(lambda self: self.checkpoint_dir / "best.keras")
    best_info_path = property(lambda self: self.checkpoint_dir / "best.json")

    def checkpoint_path(self, step, partial=0):
        """`checkpoints/ckpt-<step>[-<micro-batch>].keras`; `partial` counts the micro-batches
        of an interrupted accumulation."""
        name = f"ckpt-{step:07d}" + (f"-{partial}" if partial else "")
        return self.checkpoint_dir / f"{name}.keras"

    def exists(self):
        return self.config_path.is_file()

    # --- files -----------------------------------------------------------------------------
    def create(self):
        """Makes the directory; a path that cannot be one is a `RunError` naming it."""
        try:
            if self.path.exists() and not self.path.is_dir():
                raise RunError(f"{self.path}: exists and is not a directory")
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise RunError(f"{self.path}: cannot write a run directory here ({error.strerror or error})") from None
        return self

    def write_json(self, path, payload):
        write_json_atomic(path, payload)

    def read_json(self, path, required=True):
        """The JSON at `path`; a damaged file is a `RunError` naming it (None if absent and not
        `required`)."""
        path = Path(path)
        if not path.is_file():
            if required:
                raise RunError(f"{path}: file not found")
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunError(f"{path}: damaged JSON ({error})") from None

    def save_model(self, model, path=None):
        save_model_atomic(model, path or self.model_path)

    def read_metrics(self):
        return self.read_json(self.metrics_path)

    # --- what run this is ------------------------------------------------------------------
    def identity(self):
        """`run.json` as a dict ({} for a run written before run.json existed, or none)."""
        return self.read_json(self.run_path, required=False) or {}

    def kind(self):
        """"lm", "classifier" or "sft"; older runs are recognised by their files."""
        kind = self.identity().get("kind")
        if kind:
            return kind
        if self.finetune_path.is_file():
            task = (self.read_json(self.finetune_path) or {}).get("task")
            return "classifier" if task == "classify" else "sft"
        return "lm" if self.exists() else None

    def record(self, kind, **fingerprints):
        """Writes `run.json`: the kind of run and fingerprints (hashes) of what made it."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
        self.write_json(self.run_path, {"kind": kind, "fingerprints": fingerprints})

    def mismatches(self, **fingerprints):
        """Names of the fingerprints that differ from the recorded ones (unrecorded ones pass)."""
        recorded = self.identity().get("fingerprints", {})
        return [k for k, v in fingerprints.items() if k in recorded and recorded[k] != v]

    def claim(self, kind, overwrite=False, what="this command"):
        """Makes sure `kind` may be written here: an empty directory, or a run of the same kind.

        A directory holding another kind of run (or files that are no run) is refused unless
        `overwrite`, which deletes the old run first.
        """
        present = self.kind()
        foreign = present is not None and present != kind
        stray = present is None and any(not self._ours(p) for p in self._children())
        if (foreign or stray) and not overwrite:
            held = f"a {present} run" if present else "files that are not a kerasllm run"
            raise RunError(
                f"{self.path}: holds {held}; {what} writes a {kind} run and will not overwrite it. "
                "Choose another --output, or pass --overwrite to replace it"
            )
        if overwrite:
            self.clear()

    def clear(self):
        """Deletes every file of the run (not the lock), completely: nothing of it is mixed
        into the next run."""
        for child in self._children():
            if self._ours(child):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _children(self):
        return list(self.path.iterdir()) if self.path.is_dir() else []

    @staticmethod
    def _ours(child):
        """The lock and multi-worker workers' own run directories are never cleared here."""
        return child.name == ".lock" or (child.is_dir() and child.name.startswith("worker-"))

    # --- the writer's lock -----------------------------------------------------------------
    def lock(self):
        """Takes the directory's lock for this process (`unlock` or exit releases it).

        Raises:
            RunError: another live process holds it; the message names its pid.
        """
        self.create()
        handle = open(self.path / ".lock", "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunError(
                f"{self.path}: in use by another kerasllm process (pid {holder}); wait for it to "
                "finish or use another --output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle
        return self

    def unlock(self):
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self):
        return self.lock()

    def __exit__(self, *exc):
        self.unlock()

    # --- checkpoints -----------------------------------------------------------------------
    def checkpoints(self):
        """`[(info, path)]` of the checkpoints with a readable info file, oldest first (by data
        position, never by file name)."""
        found = []
        for info_path in self.checkpoint_dir.glob("ckpt-*.json"):
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                continue
            found.append((info, info_path.with_suffix(".keras")))
        return sorted(found, key=lambda item: (item[0].get("batches", 0), item[0].get("time", 0)))

    def latest_checkpoint(self, log=None):
        """`(path, info)` of the newest intact checkpoint, or `(None, None)`.

        A damaged newest checkpoint is reported through `log` and the one before it is used.
        """
        for info, path in reversed(self.checkpoints()):
            try:
                check_keras_file(path)
            except RunError as error:
                if log is not None:
                    log(f"warning: {error}; trying the checkpoint before it")
                continue
            return path, info
        return None, None

    def write_checkpoint(self, model, info, keep):
        """Saves `model` as the checkpoint `info` describes, then keeps the `keep` newest.

        The model file, its info file and `latest.json` are each written atomically, in that
        order, so a crash leaves the previous checkpoint complete.
        """
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / info["file"]
        save_model_atomic(model, path)
        self.write_json(path.with_suffix(".json"), info)
        self.write_json(self.latest_path, info)
        for _, old in self.checkpoints()[: -max(1, keep)]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        return path

    def write_best(self, model, info):
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save_model_atomic(model, self.best_path)
        self.write_json(self.best_info_path, info)


def load_run(run_dir, block_size=None):
    """Loads `(config, tokenizer, model)` from a run directory written by kerasllm, or from a
    published checkpoint (a Hugging Face or keras-hub folder, `hf://ORG/NAME`, a preset name;
    see `kerasllm.checkpoints.load_pretrained`).

    A run's final `model.keras` is used, or else its newest intact checkpoint.

    Args:
        run_dir: the run directory or checkpoint.
        block_size: a GPT context to run with (`--set model.block_size=N`); `None` keeps the
            model's. Shorter crops it (learned position tables are sliced, as nanoGPT's
            `crop_block_size`; RoPE needs nothing); longer is a `ConfigError`.

    Raises:
        RunError: not a run directory, or its files are missing or damaged (named).
        ConfigError: `block_size` is longer than the model's context.
    """
    from kerasllm.checkpoints import is_pretrained_source, load_pretrained
    from kerasllm.config import load_config
    from kerasllm.tokenizers import load_tokenizer

    run = RunDir(run_dir)
    if not run.exists() and (is_pretrained_source(run_dir) or (run.path / "config.json").is_file()):
        return load_pretrained(run_dir, block_size=block_size)  # a config.json in neither format gets its error there
    if not run.path.is_dir():
        raise RunError(f"{run.path}: no such run directory (nor a Hugging Face / keras-hub checkpoint)")
    if not run.exists():
        raise RunError(f"{run.path}: not a kerasllm run directory (no {run.config_path.name}) nor a Hugging Face "
                       "or keras-hub checkpoint (no config.json)")
    config = load_config(str(run.config_path))
    tokenizer = load_tokenizer(run.tokenizer_dir)
    model_path = run.model_path
    if not model_path.is_file():
        model_path, _ = run.latest_checkpoint()
        if model_path is None:
            raise RunError(f"{run.path}: no {run.model_path.name} and no intact checkpoint to load")
    model = load_keras_model(model_path)
    from kerasllm.models import GPT

    if block_size and isinstance(model, GPT) and block_size != config.model.block_size:
        config, model = _cropped(config, model, block_size, run.config_path)
    return config, tokenizer, model


def _cropped(config, model, block_size, source):
    """`(config, model)` with the context cut to `block_size` (the first rows of every
    per-position table; everything else copied as it is)."""
    import dataclasses

    from kerasllm.errors import ConfigError
    from kerasllm.models import build_model

    context = config.model.block_size
    if block_size > context:
        raise ConfigError(
            f"{source}: the run's context is {context} tokens; model.block_size = {block_size} is longer "
            f"(use at most {context})"
        )
    config = config.replace(model=dataclasses.replace(config.model, block_size=block_size))
    cropped = build_model(config.model, vocab_size=model.vocab_size)
    for new, old in zip(cropped.weights, model.weights):
        value = old.numpy()
        if tuple(value.shape) != tuple(new.shape) and value.shape[0] == context:
            value = value[:block_size]  # learned positions: (block_size, n_embd)
        new.assign(value)
    return config, cropped
