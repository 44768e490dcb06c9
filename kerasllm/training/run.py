"""A pretraining run, end to end: data -> tokenizer -> model -> fit -> run directory.

Run directory layout (`--output`, by default `saved_models/<recipe name>`):

    config.toml          the resolved config
    tokenizer/           the trained tokenizer
    checkpoints/         ckpt-<step>.keras (model + optimizer) and latest.json
    logs/                TensorBoard event files
    log.csv              one row per evaluation
    model.keras          the final model
    metrics.json         final losses, throughput and sizes

Running again into a directory that holds a checkpoint resumes from it.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from kerasllm.config import Config
from kerasllm.data import encode_documents, lm_dataset, load_corpus, split_documents
from kerasllm.errors import ConfigError, RunError
from kerasllm.generation import Generator
from kerasllm.models import build_model
from kerasllm.tokenizers import get_tokenizer_class, load_tokenizer
from kerasllm.training.callbacks import (
    Checkpointer,
    StopAtStep,
    Throughput,
    latest_checkpoint,
    save_model_atomic,
    write_json_atomic,
)
from kerasllm.training.optimizers import build_optimizer

CONFIG_FILE = "config.toml"
TOKENIZER_DIR = "tokenizer"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"


@dataclasses.dataclass
class PreparedData:
    tokenizer: object
    train_ids: np.ndarray
    val_ids: np.ndarray


def prepare_data(config, tokenizer=None, log=print):
    """Loads the corpus, splits it, trains (or reuses) the tokenizer and encodes both splits."""
    documents = load_corpus(config.data.dataset)
    train_docs, val_docs = split_documents(
        documents, config.data.val_fraction, config.data.split, config.data.seed
    )
    if tokenizer is None:
        tokenizer = get_tokenizer_class(config.data.tokenizer).train(
            train_docs, vocab_size=config.data.vocab_size
        )
    train_ids = encode_documents(tokenizer, train_docs)
    val_ids = encode_documents(tokenizer, val_docs)
    log(
        f"data: {config.data.dataset} - {len(documents)} documents, {len(train_ids):,} train / "
        f"{len(val_ids):,} val tokens, {config.data.tokenizer} tokenizer with "
        f"{tokenizer.vocabulary_size} ids"
    )
    return PreparedData(tokenizer, train_ids, val_ids)


def compile_model(model, config):
    """Compiles with AdamW + warmup-cosine and sparse cross-entropy on logits."""
    model.compile(
        optimizer=build_optimizer(config.train, model),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=config.train.jit_compile,
        steps_per_execution=config.train.steps_per_execution,
    )
    return model


def _check_schedule(train):
    for key in ("max_steps", "eval_interval", "batch_size", "eval_steps"):
        if getattr(train, key) <= 0:
            raise ConfigError(f"train.{key} = {getattr(train, key)}: expected a positive integer")
    every = train.checkpoint_every or train.eval_interval
    if every % train.eval_interval:
        raise ConfigError(
            f"train.checkpoint_every = {every} must be a multiple of train.eval_interval = "
            f"{train.eval_interval} (checkpoints are taken after evaluations)"
        )
    return every


def _restore(run_dir, config, log):
    """Model and optimizer state from the newest checkpoint, compiled for this config."""
    path, info = latest_checkpoint(run_dir)
    if path is None:
        return None, 0
    saved = keras.models.load_model(path, compile=True)
    model = build_model(config.model, vocab_size=saved.vocab_size)
    model.set_weights(saved.get_weights())
    compile_model(model, config)
    model.optimizer.build(model.trainable_variables)
    if len(model.optimizer.variables) != len(saved.optimizer.variables):
        raise RunError(f"{path}: optimizer state does not match the config; use --restart")
    for new, old in zip(model.optimizer.variables, saved.optimizer.variables):
        new.assign(old)
    step = int(model.optimizer.iterations.numpy())
    log(f"resuming from {path} at step {step}")
    return model, step


def pretrain(config, output_dir, restart=False, log=print, verbose="auto", callbacks=()):
    """Trains a language model as `config` says and writes a run directory.

    Args:
        config: a `kerasllm.config.Config`.
        output_dir: the run directory; a checkpoint there is resumed unless `restart`.
        restart: ignore existing checkpoints and start over.
        log: function printing progress lines.
        verbose: Keras `fit` verbosity.
        callbacks: extra Keras callbacks for `fit` (e.g. `kerasllm.notebook.LiveLossPlot`).

    Returns:
        `(model, tokenizer, metrics)`.
    """
    started = time.perf_counter()
    run_dir = Path(output_dir)
    train = config.train
    checkpoint_every = _check_schedule(train)
    run_dir.mkdir(parents=True, exist_ok=True)

    model, step = (None, 0) if restart else _restore(run_dir, config, log)
    tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR) if model is not None else None
    data = prepare_data(config, tokenizer=tokenizer, log=log)
    tokenizer = data.tokenizer
    if model is None:
        keras.utils.set_random_seed(train.seed)
        model = compile_model(build_model(config.model, vocab_size=tokenizer.vocabulary_size), config)
        tokenizer.save(run_dir / TOKENIZER_DIR)
    config.model.vocab_size = tokenizer.vocabulary_size
    config.save(run_dir / CONFIG_FILE)

    block, batch = config.model.block_size, train.batch_size
    train_ds = lm_dataset(
        data.train_ids, block, batch, stride=config.data.stride, shuffle=True, repeat=True,
        seed=config.data.seed, name="train",
    ).skip(step)  # a resumed run continues the exact batch sequence
    # Validation windows are spread evenly over the whole split (not its first pages), so
    # eval_steps batches estimate the loss of all of it.
    val_stride = max(block, (len(data.val_ids) - block - 1) // max(1, train.eval_steps * batch))
    val_ds = lm_dataset(
        data.val_ids, block, batch, stride=val_stride, shuffle=False, repeat=False,
        max_batches=train.eval_steps, name="validation",
    )
    parameters = model.count_params()
    log(
        f"model: {type(model).__name__} with {parameters:,} parameters "
        f"({config.model.n_layer} layers, {config.model.n_embd} wide, context {block}); "
        f"{train.max_steps} steps of {batch} x {block} tokens, validation every {train.eval_interval}"
    )

    throughput = Throughput(tokens_per_step=batch * block)
    callbacks = [
        *callbacks,
        StopAtStep(train.max_steps),
        throughput,
        Checkpointer(run_dir, every=checkpoint_every, keep=train.keep_checkpoints),
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=step > 0),
        keras.callbacks.TensorBoard(
            log_dir=str(run_dir / "logs"), update_freq=train.log_every or "epoch", write_graph=False
        ),
    ]
    epochs = math.ceil(train.max_steps / train.eval_interval)
    history = {}
    if step < train.max_steps:
        fit = model.fit(
            train_ds,
            epochs=epochs,
            initial_epoch=step // train.eval_interval,
            steps_per_epoch=train.eval_interval,
            validation_data=val_ds,
            callbacks=callbacks,
            shuffle=False,  # the dataset is already shuffled
            verbose=verbose,
        )
        history = fit.history
    else:
        log(f"already trained to step {step} (train.max_steps = {train.max_steps}); use --restart to start over")

    save_model_atomic(model, run_dir / MODEL_FILE)
    val_loss = history["val_loss"][-1] if history.get("val_loss") else float(model.evaluate(val_ds, verbose=0))
    steps = int(model.optimizer.iterations.numpy())
    metrics = {
        "train_loss": float(history["loss"][-1]) if history.get("loss") else None,
        "val_loss": float(val_loss),
        "val_perplexity": float(math.exp(min(val_loss, 700))),
        "val_bits_per_token": float(val_loss / math.log(2)),
        "steps": steps,
        "tokens_seen": steps * batch * block,
        "tokens_per_second": float(throughput.tokens_per_second()) if throughput.epochs else None,
        "wall_seconds": float(time.perf_counter() - started),
        "parameters": int(parameters),
        "tokenizer": tokenizer.kind,
        "vocabulary_size": tokenizer.vocabulary_size,
    }
    if tokenizer.kind in ("char", "byte"):
        metrics["val_bits_per_char"] = metrics["val_bits_per_token"]
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    return model, tokenizer, metrics


def load_run(run_dir):
    """Loads `(config, tokenizer, model)` from a run directory written by `pretrain`."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: not a kerasllm run directory (no {CONFIG_FILE})")
    from kerasllm.config import load_config

    config = load_config(str(run_dir / CONFIG_FILE))
    tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR)
    model_path = run_dir / MODEL_FILE
    if not model_path.is_file():
        model_path, _ = latest_checkpoint(run_dir)
        if model_path is None:
            raise RunError(f"{run_dir}: no {MODEL_FILE} and no checkpoint to load")
    model = keras.models.load_model(model_path, compile=False)
    return config, tokenizer, model


def sample_text(model, tokenizer, sample, jit_compile=True):
    """Generates the end-of-run sample described by a `SampleConfig`."""
    generator = Generator(model, tokenizer, jit_compile=jit_compile)
    prompt_ids = tokenizer.encode(sample.prompt)
    ids = generator.generate(
        [prompt_ids], max_new_tokens=sample.max_new_tokens, temperature=sample.temperature,
        top_k=sample.top_k, seed=sample.seed,
    )
    return tokenizer.decode(ids[0])


def read_metrics(run_dir):
    return json.loads((Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8"))
