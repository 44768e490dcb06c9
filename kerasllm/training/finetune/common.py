"""What every fine-tuning task shares: the source run, the resolved config, the size rule,
the validation hold-out, training with best-pass selection, and writing the new run."""

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import keras
import numpy as np

from kerasllm.errors import ConfigError, RunError

KINDS = {"classify": "classifier", "sft": "sft"}  # finetune.task -> the RunDir kind it writes

# The size rule (README, "Fine-tuning"): (fewer than N training examples, epochs, peak rate).
# Small sets get more passes at a lower rate; best-pass selection and early stopping keep the
# extra passes from overfitting.
SIZE_RULE = ((2_000, 10, 2e-4), (8_000, 6, 3e-4), (32_000, 4, 4e-4), (math.inf, 2, 5e-4))
LORA_RATE_FACTOR = 4  # only the adapters and the head train: a higher rate, as LoRA is used
MAX_EVAL_INTERVAL = 500  # validate at least this often on large sets


def refuse_source_as_output(from_run, output_dir):
    """A fine-tuned run is a new directory: writing it over its source run is a `RunError`."""
    if Path(output_dir).resolve() == Path(from_run).resolve():
        raise RunError(
            f"--output {output_dir}: is the pretrained run given as --from; fine-tuning writes a new run "
            "directory, choose another --output"
        )


def resolve_model(config, pretrained, tokenizer):
    """A copy of `config` with the pretrained run's `[model]` and `finetune.max_length` filled in.

    For a classifier, `model.dropout` given by the recipe or `--set` is kept: it is how the
    backbone trains, not its shape. The caller's `config` is never changed.
    """
    ft = config.finetune
    model = dataclasses.replace(pretrained.model, vocab_size=tokenizer.vocabulary_size)
    if ft.task == "classify" and config.source_of("model.dropout") is not None:
        model = dataclasses.replace(model, dropout=config.model.dropout)
    if model.arch == "gpt" and ft.max_length > model.block_size:
        raise ConfigError(
            f"finetune.max_length = {ft.max_length} exceeds the pretrained context "
            f"model.block_size = {model.block_size}"
        )
    return config.replace(model=model, finetune=dataclasses.replace(ft, max_length=ft.max_length or model.block_size))


def _unset(config, section_name, key):
    """True when `section.key` holds its default and no recipe file or `--set` gave it."""
    section = getattr(config, section_name)
    default = next(f.default for f in dataclasses.fields(section) if f.name == key)
    return getattr(section, key) == default and config.source_of(f"{section_name}.{key}") is None


def size_schedule(config, train_examples):
    """A copy of `config` whose steps, epochs, rate and validation interval fit the data size.

    With `finetune.size_defaults` on and `train.max_steps` not given (neither in the recipe nor
    with `--set`), every key of the rule not given is chosen from the number of training examples N (a key given
    any other value keeps it; for sft, N counts packed rows):

    * `finetune.epochs` and `train.learning_rate` from `SIZE_RULE` (fewer than 2,000
      examples: 10 epochs at 2e-4; 8,000: 6 at 3e-4; 32,000: 4 at 4e-4; more: 2 at 5e-4),
      the rate times 4 with LoRA;
    * `train.max_steps` = epochs x ceil(N / batch_size); `train.warmup_steps` 6% of it;
      `train.min_lr` a tenth of the peak; `train.eval_interval` one epoch, at most 500 steps.

    Otherwise `train.max_steps` caps `finetune.epochs` passes, as it always did.

    Examples:

    >>> from kerasllm.config import Config
    >>> config = Config()
    >>> config.train.batch_size = 32
    >>> sized = size_schedule(config, 1_000)
    >>> sized.finetune.epochs, sized.train.max_steps, sized.train.learning_rate, sized.train.eval_interval
    (10, 320, 0.0002, 32)
    >>> config.train.max_steps  # the caller's config is unchanged
    2000
    """
    train, ft = config.train, config.finetune
    steps_per_epoch = max(1, math.ceil(train_examples / train.batch_size))
    if not (ft.size_defaults and _unset(config, "train", "max_steps")):
        max_steps = min(train.max_steps, ft.epochs * steps_per_epoch)
        return config.replace(train=dataclasses.replace(
            train, max_steps=max_steps, eval_interval=min(train.eval_interval, max_steps)
        ))
    _, rule_epochs, rule_rate = next(row for row in SIZE_RULE if train_examples < row[0])
    epochs = rule_epochs if _unset(config, "finetune", "epochs") else ft.epochs
    rate = rule_rate * (LORA_RATE_FACTOR if ft.lora_rank else 1)
    rate = rate if _unset(config, "train", "learning_rate") else train.learning_rate
    max_steps = epochs * steps_per_epoch
    chosen = {
        "max_steps": max_steps,
        "learning_rate": rate,
        "warmup_steps": max(1, round(0.06 * max_steps)) if _unset(config, "train", "warmup_steps") else train.warmup_steps,
        "min_lr": rate / 10 if _unset(config, "train", "min_lr") else train.min_lr,
        "eval_interval": (
            min(steps_per_epoch, MAX_EVAL_INTERVAL) if _unset(config, "train", "eval_interval") else train.eval_interval
        ),
    }
    chosen["eval_interval"] = min(chosen["eval_interval"], max_steps)
    return config.replace(train=dataclasses.replace(train, **chosen), finetune=dataclasses.replace(ft, epochs=epochs))


def holdout(n, fraction, seed):
    """`(train_rows, val_rows)`: a seeded random `fraction` of `n` rows held out (at least one).

    Examples:

    >>> train, val = holdout(10, 0.2, seed=0)
    >>> len(train), len(val), sorted([*train, *val]) == list(range(10))
    (8, 2, True)
    """
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(n * fraction)) if n > 1 else 0
    return order[n_val:], order[:n_val]


def selection_monitor(config, has_validation):
    """The Keras log key `finetune.select` names for this task, or "last"."""
    select = config.finetune.select
    if select == "auto":
        select = "val_accuracy" if config.finetune.task == "classify" else "val_loss"
    if config.finetune.task == "sft" and select == "val_accuracy":
        raise ConfigError("finetune.select = 'val_accuracy': sft has no accuracy; expected val_loss, last or auto")
    return select if has_validation else "last"


def fit_selected(model, config, train_ds, val_ds, run, verbose="auto", **fit_kwargs):
    """Trains `train.max_steps` steps, validating every `train.eval_interval`, and keeps the
    weights `finetune.select` picks (Keras' `EarlyStopping` restores the best pass at the end;
    `finetune.patience` passes without improvement stop training early).

    Returns:
        A dict for `metrics.json`: `select`, `steps` (trained), `selected_step` (where the kept
        weights come from), `evaluations`, `stopped_early` and the kept pass's `train_loss`.
    """
    train = config.train
    interval = min(train.eval_interval, train.max_steps)
    passes = math.ceil(train.max_steps / interval)
    monitor = selection_monitor(config, val_ds is not None)
    callbacks = [keras.callbacks.CSVLogger(str(run.log_path))]
    if monitor != "last":
        keeper = keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max" if monitor == "val_accuracy" else "min",
            patience=config.finetune.patience or passes, restore_best_weights=True,
        )
        callbacks.append(keeper)
    history = model.fit(
        train_ds, epochs=passes, steps_per_epoch=interval, validation_data=val_ds, callbacks=callbacks,
        verbose=verbose, shuffle=False, **fit_kwargs,  # the dataset shuffles itself
    ).history
    steps = int(model.optimizer.iterations.numpy())
    done = len(history["loss"])
    best = keeper.best_epoch if monitor != "last" else done - 1
    return {
        "select": monitor,
        "steps": steps,
        "selected_step": min((best + 1) * interval, steps),
        "evaluations": done,
        "stopped_early": done < passes,
        "train_loss": float(history["loss"][best]),
    }


def count_trainable(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def _fingerprint(payload):
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _file_fingerprint(path):
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def save_run(run, config, tokenizer, model, info, metrics):
    """Writes the fine-tuned run: tokenizer, resolved config, model, finetune.json, metrics.json
    and run.json (its kind and fingerprints of the model config, tokenizer and training file)."""
    tokenizer.save(run.tokenizer_dir)
    config.save(run.config_path)
    run.save_model(model)
    run.write_json(run.finetune_path, info)
    run.write_json(run.metrics_path, metrics)
    run.record(
        KINDS[config.finetune.task], model=_fingerprint(dataclasses.asdict(config.model)),
        tokenizer=tokenizer.fingerprint(), data=_file_fingerprint(config.data.dataset),
    )


def read_finetune_info(run_dir):
    """`finetune.json` of a fine-tuned run as a dict, or None for a pretraining run."""
    from kerasllm.training.rundir import RunDir

    run = RunDir(run_dir)
    return run.read_json(run.finetune_path, required=False)

