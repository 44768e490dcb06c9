"""A pretraining run, end to end: data -> tokenizer -> model -> fit -> run directory.

Run directory layout (`--output`, by default `saved_models/<recipe name>`):

    config.toml          the resolved config
    tokenizer/           the trained tokenizer
    checkpoints/         ckpt-<step>.keras (model + optimizer) with ckpt-<step>.json (step,
                         data position, RNG and callback state), latest.json, best.keras
    logs/                TensorBoard event files
    log.csv              one row per evaluation / checkpoint boundary
    curves.png           train/val loss and learning rate against step
    model.keras          the final model
    metrics.json         final losses, throughput and sizes

Running again into a directory that holds a checkpoint resumes from it, mid-epoch included,
with the same batches, learning rate and dropout randomness as an uninterrupted run.
"""

import json
import math
import signal
import threading
import time
from pathlib import Path

import keras

from kerasllm.config import Config
from kerasllm.data import lm_dataset
from kerasllm.data.prepare import prepare_lm_data
from kerasllm.errors import ConfigError, RunError
from kerasllm.generation import Generator
from kerasllm.models import build_model, check_remat
from kerasllm.tokenizers import load_tokenizer
from kerasllm.training.callbacks import (
    Checkpointer,
    EarlyStop,
    Interrupt,
    NaNGuard,
    ReduceOnPlateau,
    RunLog,
    RunState,
    Throughput,
    latest_checkpoint,
    save_model_atomic,
    write_json_atomic,
)
from kerasllm.training.distribute import resolve_jit, resolve_placement
from kerasllm.training.optimizers import apply_regularization, build_optimizer, inner_optimizer
from kerasllm.training.plots import plot_run
from kerasllm.training.precision import precision_scope, resolve_precision, wrap_for_policy

CONFIG_FILE = "config.toml"
TOKENIZER_DIR = "tokenizer"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.csv"
PLOT_FILE = "curves.png"


def prepare_data(config, tokenizer=None, log=print):
    """Reads and cleans the corpus, splits it, trains (or reuses, or loads from the cache) the
    tokenizer and encodes both splits once into the on-disk token cache
    (`kerasllm.data.prepare.prepare_lm_data`)."""
    return prepare_lm_data(config.data, tokenizer=tokenizer, log=log)


def compile_model(model, config, policy="float32", jit_compile=None):
    """Compiles with the configured optimizer (loss-scaled under mixed_float16), L1/L2 penalties
    and sparse cross-entropy on the float32 logits."""
    train = config.train
    apply_regularization(model, train.l1, train.l2)
    model.compile(
        optimizer=wrap_for_policy(build_optimizer(train, model), policy),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=train.jit_compile if jit_compile is None else jit_compile,
        steps_per_execution=train.steps_per_execution,
    )
    return model


def _check_schedule(train):
    for key in ("max_steps", "eval_interval", "batch_size", "eval_steps", "grad_accum_steps"):
        if getattr(train, key) <= 0:
            raise ConfigError(f"train.{key} = {getattr(train, key)}: expected a positive integer")
    if train.checkpoint_every < 0:
        raise ConfigError(f"train.checkpoint_every = {train.checkpoint_every}: expected 0 or a positive integer")
    if train.batch_size % train.grad_accum_steps:
        raise ConfigError(
            f"train.batch_size = {train.batch_size} must be a multiple of train.grad_accum_steps = "
            f"{train.grad_accum_steps} (each optimizer step averages that many equal micro-batches)"
        )
    if train.steps_per_execution != 1 and (train.grad_accum_steps > 1 or train.checkpoint_every):
        raise ConfigError(
            f"train.steps_per_execution = {train.steps_per_execution}: use 1 with "
            "train.grad_accum_steps > 1 or train.checkpoint_every (they count single batches)"
        )
    return train.checkpoint_every or train.eval_interval


def _build(config, placement, policy, vocab_size, jit_compile, seed):
    with precision_scope(policy), placement.scope():
        keras.utils.set_random_seed(seed)
        # Only "on" rematerializes: "auto" is the planner's choice at planning time, and the
        # planner's answer for this run is not known here.
        model = build_model(config.model, vocab_size=vocab_size, remat=config.plan.remat == "on")
        compile_model(model, config, policy, jit_compile)
        model.optimizer.build(model.trainable_variables)
    return model


def _restore_into(model, path, policy):
    """Copies weights and optimizer state of the checkpoint at `path` into `model`."""
    with precision_scope(policy):
        saved = keras.models.load_model(path, compile=True)
    model.set_weights(saved.get_weights())
    new, old = model.optimizer.variables, saved.optimizer.variables
    if len(new) != len(old) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(new, old)):
        raise RunError(
            f"{path}: its optimizer state ({len(old)} variables) does not match train.optimizer = "
            f"{inner_optimizer(model.optimizer).__class__.__name__.lower()} with this config "
            f"({len(new)}); use --restart to start over"
        )
    for variable, value in zip(new, old):
        variable.assign(value)


class _SigintHandler:
    """Turns the first Ctrl-C into a graceful stop (checkpoint, then exit); a second one
    interrupts at once."""

    def __init__(self, interrupt):
        self.interrupt = interrupt
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.interrupt.request()
        signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def pretrain(config, output_dir, restart=False, log=print, verbose="auto", callbacks=()):
    """Trains a language model as `config` says and writes a run directory.

    Args:
        config: a `kerasllm.config.Config`.
        output_dir: the run directory; a checkpoint there is resumed unless `restart`.
            Under multi-worker training, workers other than the chief write into
            `output_dir/worker-<index>`.
        restart: ignore existing checkpoints and start over.
        log: function printing progress lines.
        verbose: Keras `fit` verbosity.
        callbacks: extra Keras callbacks for `fit` (e.g. `kerasllm.notebook.LiveLossPlot`).

    Returns:
        `(model, tokenizer, metrics)`.

    Raises:
        RunError: the loss became NaN/Inf (the message names the step and the last good
            checkpoint), or the run was interrupted with Ctrl-C (after saving a checkpoint).
    """
    started = time.perf_counter()
    train = config.train
    checkpoint_every = _check_schedule(train)
    if config.plan.remat == "on":
        check_remat(config.model)  # before the corpus and tokenizer work, not after
    # tf.distribute's multi-worker strategy must exist before TensorFlow runs any op.
    placement = None
    if keras.backend.backend() != "jax":
        placement = resolve_placement(
            train.strategy, model_parallel=train.model_parallel, log=log, layout=config.plan.layout
        )
    run_dir = Path(output_dir)
    if placement is not None and not placement.is_chief:
        run_dir = run_dir / f"worker-{placement.worker_index}"
    run_dir.mkdir(parents=True, exist_ok=True)

    path, info = (None, None) if restart else latest_checkpoint(run_dir)
    tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR) if path is not None else None
    data = prepare_data(config, tokenizer=tokenizer, log=log)
    tokenizer = data.tokenizer
    config.model.vocab_size = tokenizer.vocabulary_size
    if placement is None:
        placement = resolve_placement(
            train.strategy, config.model, train.model_parallel, log=log, layout=config.plan.layout
        )
    policy = resolve_precision(train.precision, placement.kind)
    jit_compile = resolve_jit(train.jit_compile, placement, log=log)
    accum = train.grad_accum_steps
    micro_batch = train.batch_size // accum
    if micro_batch % placement.replicas:
        raise ConfigError(
            f"train.batch_size = {train.batch_size} (micro-batch {micro_batch}) must be divisible by "
            f"the {placement.replicas} replicas of {placement.kind}"
        )
    log(f"{placement.describe()}; precision {policy}; global batch {train.batch_size}"
        + (f" in {accum} micro-batches of {micro_batch}" if accum > 1 else ""))

    model = _build(config, placement, policy, tokenizer.vocabulary_size, jit_compile, train.seed)
    if path is not None:
        with placement.scope():
            _restore_into(model, path, policy)
        log(f"resuming from {path} at step {info['step']} (batch {info['batches']})")
    else:
        tokenizer.save(run_dir / TOKENIZER_DIR)
    config.save(run_dir / CONFIG_FILE)
    batches = info["batches"] if info else 0
    step = batches // accum

    block = config.model.block_size
    state = RunState(batches, accum, tokens_per_batch=micro_batch * block, max_steps=train.max_steps)
    # Validation windows are spread evenly over the whole split (not its first pages), so
    # eval_steps batches estimate the loss of all of it.
    val_stride = max(block, (len(data.val_ids) - block - 1) // max(1, train.eval_steps * train.batch_size))
    val_ds = lm_dataset(
        data.val_ids, block, train.batch_size, stride=val_stride, shuffle=False, repeat=False,
        max_batches=train.eval_steps, name="validation",
    )

    def train_ds(skip):  # the same shuffled stream every time; a resumed run skips what it saw
        return lm_dataset(
            data.train_ids, block, micro_batch, stride=config.data.stride, shuffle=True, repeat=True,
            seed=config.data.seed, name="train", start_batch=skip,
        )

    parameters = model.count_params()
    log(
        f"model: {type(model).__name__} with {parameters:,} parameters "
        f"({config.model.n_layer} layers, {config.model.n_embd} wide, context {block}); "
        f"{train.max_steps} steps of {train.batch_size} x {block} tokens, validation every "
        f"{train.eval_interval}, checkpoint every {checkpoint_every}"
    )

    # One Keras epoch is `chunk` optimizer steps, so checkpoints (every `checkpoint_every`) and
    # validation (every `eval_interval`, via validation_freq) both fall on epoch ends.
    chunk = math.gcd(train.eval_interval, checkpoint_every)
    guard, interrupt = NaNGuard(state), Interrupt()
    stateful = {}
    if train.schedule == "plateau":
        stateful["plateau"] = ReduceOnPlateau(
            inner_optimizer(model.optimizer), train.plateau_factor, train.plateau_patience, train.min_lr, log=log
        )
    if train.early_stop_patience:
        stateful["early_stop"] = EarlyStop(state, train.early_stop_patience, log=log)
    checkpointer = Checkpointer(
        run_dir, state, checkpoint_every, keep=train.keep_checkpoints, keep_best=train.keep_best,
        stateful=stateful, guard=guard,
    )
    checkpointer.set_model(model)
    if info:
        checkpointer.restore(info)
    throughput = Throughput(state, *_flops(config, train, placement, log))
    extra_callbacks = list(callbacks)
    callbacks = [
        state, guard, interrupt, throughput, *stateful.values(), *extra_callbacks,
        RunLog(run_dir / LOG_FILE, state, model.optimizer, resume_step=step, every=chunk),
        checkpointer,  # after RunLog: a checkpoint never exists without its log row
        keras.callbacks.TensorBoard(
            log_dir=str(run_dir / "logs"), update_freq=train.log_every or "epoch", write_graph=False
        ),
    ]

    if placement.kind == "multi_worker":
        _prebuild_for_multi_worker(model, placement, val_ds)
    history = {}
    if step >= train.max_steps:
        log(f"already trained to step {step} (train.max_steps = {train.max_steps}); use --restart to start over")
    with _SigintHandler(interrupt), placement.fit_scope():
        # A Ctrl-C checkpoint can sit inside an epoch: first finish that epoch.
        partial = batches % (chunk * accum)
        if partial and step < train.max_steps:
            ends_on_eval = ((batches // (chunk * accum) + 1) * chunk) % train.eval_interval == 0
            fit = model.fit(
                train_ds(batches), epochs=1, steps_per_epoch=chunk * accum - partial,
                validation_data=val_ds if ends_on_eval else None, callbacks=callbacks,
                shuffle=False, verbose=verbose,
            )
            history = fit.history
        if state.step < train.max_steps and not model.stop_training:
            fit = model.fit(
                train_ds(state.batches),
                epochs=math.ceil(train.max_steps / chunk),
                initial_epoch=state.step // chunk,
                steps_per_epoch=chunk * accum,
                validation_data=val_ds,
                validation_freq=train.eval_interval // chunk,
                callbacks=callbacks,
                shuffle=False,  # the dataset is already shuffled
                verbose=verbose,
            )
            history = {k: history.get(k, []) + v for k, v in fit.history.items()}

    if guard.bad_step is not None:
        last, last_info = latest_checkpoint(run_dir)
        kept = f"the last good checkpoint is {last} (step {last_info['step']})" if last else "no checkpoint was saved"
        raise RunError(
            f"training loss became {guard.bad_value} at step {guard.bad_step}; stopped, and {kept}. "
            "Lower train.learning_rate, set train.grad_clip, or use train.precision = \"float32\""
        )
    saved = checkpointer.save()
    if interrupt.requested:
        where = saved or latest_checkpoint(run_dir)[0]
        raise RunError(
            f"interrupted at step {state.step}: checkpoint {where} saved; run the same command "
            "again to resume, or add --restart to start over"
        )

    save_model_atomic(model, run_dir / MODEL_FILE)
    val_loss = history["val_loss"][-1] if history.get("val_loss") else None
    if val_loss is None or state.step % train.eval_interval:
        with placement.fit_scope():
            val_loss = float(model.evaluate(val_ds, verbose=0))
    plot_run(run_dir / LOG_FILE, run_dir / PLOT_FILE, title=f"{config.name}: {parameters:,} parameters")
    steps = state.step
    rates = throughput.rates() if throughput.epochs else {}
    metrics = {
        "train_loss": float(history["loss"][-1]) if history.get("loss") else None,
        "val_loss": float(val_loss),
        "val_perplexity": float(math.exp(min(val_loss, 700))),
        "val_bits_per_token": float(val_loss / math.log(2)),
        "best_val_loss": None if math.isinf(checkpointer.best_val_loss) else checkpointer.best_val_loss,
        "steps": steps,
        "tokens_seen": steps * train.batch_size * block,
        "tokens_per_second": rates.get("tokens_per_second"),
        "model_flops_per_second": rates.get("model_flops_per_second"),
        "mfu": rates.get("mfu"),
        "wall_seconds": float(time.perf_counter() - started),
        "parameters": int(parameters),
        "tokenizer": tokenizer.kind,
        "vocabulary_size": tokenizer.vocabulary_size,
        "strategy": placement.kind,
        "replicas": placement.replicas,
        "precision": policy,
        "early_stopped_at": stateful["early_stop"].stopped_at if "early_stop" in stateful else None,
    }
    if tokenizer.kind in ("char", "byte"):
        metrics["val_bits_per_char"] = metrics["val_bits_per_token"]
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    return model, tokenizer, metrics


def _prebuild_for_multi_worker(model, placement, dataset):
    # Keras' fit() builds metrics from the first distributed batch averaged with
    # strategy.reduce("MEAN"), which MultiWorkerMirroredStrategy cannot do for int32 token ids
    # (TF 2.21 / Keras 3.15: "Attempt to convert a value (PerReplica...)"): build from one local
    # batch instead and skip that step.
    with placement.strategy.scope():
        model._symbolic_build(data_batch=next(iter(dataset)))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    # The same Keras averages each step's scalar logs with reduce("MEAN", v, axis=0), which
    # fails on scalars ("Invalid reduction dimension 0"): average them over replicas instead.
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "kerasllm_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if tf_trainer._is_per_replica_instance(v) else v,
                values,
            )
        return original(values, strategy, reduction)

    reduce_per_replica.kerasllm_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def _flops(config, train, placement, log):
    """`(flops_per_token, peak_flops)` for the MFU columns; peak is `train.peak_flops`, or the
    measured matmul peak of this CPU, or None (no MFU) on accelerators without a configured peak."""
    from kerasllm.plan import flops_per_token, measure_peak_flops

    try:
        per_token = flops_per_token(config.model)
    except Exception as error:  # an architecture the planner does not model: no FLOP columns
        log(f"mfu: off ({error})")
        return None, None
    peak = train.peak_flops or None
    if peak is None and placement.on_cpu:
        peak = measure_peak_flops("float32")
        log(f"mfu: measured CPU matmul peak {peak / 1e9:.0f} GFLOP/s; {per_token / 1e6:.2f} MFLOP per token")
    return per_token, peak


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
        top_k=min(sample.top_k, tokenizer.vocabulary_size), seed=sample.seed,  # tiny vocabularies
    )
    return tokenizer.decode(ids[0])


def read_metrics(run_dir):
    return json.loads((Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8"))
