"""A pretraining run, end to end, in phases: resolve -> open the run -> data -> build or resume
-> fit (one `model.fit` per `StepPlan` fit) -> finish.

The run directory's layout is `kerasllm.training.rundir.RunDir`'s. Running again into a
directory that holds a checkpoint resumes from it, mid-epoch included, with the same batches,
learning rate and dropout randomness as an uninterrupted run. A resume must use the same model,
tokenizer and data settings (`[model]`, `[data]`: a difference is an error naming the keys);
`[train]` settings may change, e.g. `max_steps` (train longer), `learning_rate` or `grad_clip`
(after a NaN), `eval_interval`, `checkpoint_every`, `keep_checkpoints` — with the schedule's
end (`lr_decay_steps`, 0: `max_steps`) moving with `max_steps`.
"""

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import signal
import time

import keras

from kerasllm._keras_compat import multi_worker_reductions
from kerasllm.data import lm_dataset
from kerasllm.data.mixture import Mixture, mixture_datasets, prepare_training_data
from kerasllm.data.pipeline import per_worker_dataset
from kerasllm.errors import ConfigError, Interrupted, RunError
from kerasllm.generation import Generator
from kerasllm.models import build_model
from kerasllm.tokenizers import load_tokenizer
from kerasllm.training.callbacks import RunState, make_callbacks
from kerasllm.training.distribute import resolve_jit, resolve_placement
from kerasllm.training.optimizers import apply_regularization, build_optimizer, inner_optimizer
from kerasllm.training.plots import plot_run
from kerasllm.training.precision import precision_scope, resolve_precision, wrap_for_policy
from kerasllm.training.rundir import RunDir, load_keras_model, load_run  # noqa: F401 (load_run re-exported)
from kerasllm.training.signals import GracefulStop
from kerasllm.training.step_plan import StepPlan

# [data] keys that do not change which tokens a run sees.
DATA_KEYS_FREE_ON_RESUME = ("cache", "cache_dir")


def prepare_data(config, tokenizer=None, log=print):
    """Reads and cleans the corpus, splits it, trains (or reuses, or loads from the cache) the
    tokenizer and encodes both splits once into the on-disk token cache
    (`kerasllm.data.prepare.prepare_lm_data`; a `[[data.sources]]` mixture: each source its
    own store, `kerasllm.data.mixture.prepare_mixture`)."""
    return prepare_training_data(config.data, tokenizer=tokenizer, log=log)


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


def _build(config, placement, policy, vocab_size, jit_compile, seed):
    with precision_scope(policy), placement.scope():
        keras.utils.set_random_seed(seed)
        # Only "on" rematerializes: "auto" is the planner's choice at planning time, and the
        # planner's answer for this run is not known here.
        model = build_model(config.model, vocab_size=vocab_size, remat=config.plan.remat == "on")
        compile_model(model, config, policy, jit_compile)
        model.optimizer.build(model.trainable_variables)
    return model


def _restore_into(model, path, policy, placement):
    """Copies weights and optimizer state of the checkpoint at `path` into `model`."""
    with precision_scope(policy), placement.scope():
        saved = load_keras_model(path, compile=True)
        try:
            model.set_weights(saved.get_weights())
        except ValueError as error:
            raise RunError(f"{path}: its weights do not fit this model ({error}); use --restart") from None
        _restore_optimizer(model, saved, path)


def _restore_optimizer(model, saved, path):
    new, old = model.optimizer.variables, saved.optimizer.variables
    if len(new) != len(old) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(new, old)):
        raise RunError(
            f"{path}: its optimizer state ({len(old)} variables) does not match train.optimizer = "
            f"{inner_optimizer(model.optimizer).__class__.__name__.lower()} with this config "
            f"({len(new)}); use --restart to start over"
        )
    for variable, value in zip(new, old):
        variable.assign(value)


def pretrain(config, output_dir, restart=False, overwrite=False, init_from=None, log=print, verbose="auto",
             callbacks=()):
    """Trains a language model as `config` says and writes a run directory.

    Args:
        config: a `kerasllm.config.Config` (not modified: the run works on a resolved copy).
        output_dir: the run directory; a checkpoint there is resumed unless `restart`.
            Under multi-worker training, workers other than the chief write into
            `output_dir/worker-<index>`.
        restart: delete the run in `output_dir` (checkpoints, logs, model) and start over.
        init_from: continue pretraining from a checkpoint (a run directory, a Hugging Face or
            keras-hub folder, `hf://ORG/NAME`, a preset name): its architecture, weights and
            tokenizer replace `[model]` and the tokenizer; the rest of `config` applies. A run
            that resumes from its own checkpoint ignores it.
        overwrite: allow `output_dir` to hold another kind of run (e.g. a classifier), which is
            deleted first.
        log: function printing progress lines.
        verbose: Keras `fit` verbosity.
        callbacks: extra Keras callbacks for `fit` (e.g. `kerasllm.training.live.LiveLossPlot`).

    Returns:
        `(model, tokenizer, metrics)`.

    Raises:
        RunError: the directory is in use, holds another run, or does not match the config;
            the loss became NaN/Inf (the message names the step and the last good checkpoint).
        Interrupted: SIGINT or SIGTERM stopped the run (after saving a checkpoint).
    """
    started = time.perf_counter()
    config = _resolve(config)
    placement = _early_placement(config, log)  # a multi-worker strategy must exist before any TF op
    with _open_run(output_dir, placement, replace=restart or overwrite) as run:
        source = _init_source(init_from, config, log)
        config = _adopt(config, source)
        resume = None if restart else _find_resume(run, config, log)
        tokenizer = resume["tokenizer"] if resume else source and source[1]
        data = prepare_data(config, tokenizer=tokenizer, log=log)
        config = _with_vocabulary(config, data.tokenizer)
        placement, policy, model = _setup(config, placement, log)
        if resume:
            _restore_into(model, resume["path"], policy, placement)
            log(f"resuming from {resume['path']} at step {resume['info']['step']} (batch {resume['info']['batches']})")
        elif source:
            with placement.scope():
                model.set_weights(source[2].get_weights())
            _start(run, config, data)
        else:
            _start(run, config, data)
        state = _run_state(config, resume)
        plan = _plan(config.train, state, model)
        train_ds, val_ds = _datasets(config, data, placement)
        cbs = make_callbacks(
            run, model, config.train, state, resume and resume["info"],
            flops=_flops(config, config.train, placement, log), extra=callbacks, log=log,
        )
        _describe(config, model, plan, log)
        with _keras_workarounds(model, placement, val_ds):
            history, signum = _fit(model, plan, train_ds, val_ds, cbs, placement, verbose)
            _check_outcome(run, cbs, config, resume, signum)
            metrics = _finish(run, config, model, data.tokenizer, history, cbs, val_ds, placement, policy, started)
    return model, data.tokenizer, metrics


def _resolve(config):
    """A validated copy of `config` (every rule, before any data is read): the run never
    changes the caller's object."""
    return copy.deepcopy(config).validate()


def _init_source(init_from, config, log):
    """`(config, tokenizer, model)` of the `init_from` checkpoint, or None; cropped to
    `--set model.block_size=N` when that is given (a recipe's `[model]` does not apply)."""
    if init_from is None:
        return None
    set_by_flag = (config.source_of("model.block_size") or "").startswith("--set")
    source = load_run(init_from, block_size=config.model.block_size if set_by_flag else None)
    log(f"init from {init_from}: {source[2].count_params():,} parameters, {source[1].kind} tokenizer")
    return source


def _adopt(config, source):
    """`config` with the architecture and tokenizer of `source` (the rest of `config` stays)."""
    if source is None:
        return config
    source_config, tokenizer, _ = source
    model = dataclasses.replace(source_config.model, vocab_size=tokenizer.vocabulary_size)
    data = dataclasses.replace(config.data, tokenizer=tokenizer.kind, vocab_size=tokenizer.vocabulary_size)
    return config.replace(model=model, data=data).validate()


def _early_placement(config, log):
    if keras.backend.backend() == "jax":
        return None  # resolved with the model config in `_setup` (the layout needs it)
    train = config.train
    return resolve_placement(train.strategy, model_parallel=train.model_parallel, log=log, layout=config.plan.layout)


class _open_run:
    """Creates and locks the run directory (chief or worker), refuses a run of another kind
    unless `replace`, which clears it first; a run that fails before writing anything leaves
    no empty directory behind."""

    def __init__(self, output_dir, placement, replace):
        run = RunDir(output_dir)
        if placement is not None and not placement.is_chief:
            run = RunDir(run.path / f"worker-{placement.worker_index}")
        self.run, self.replace, self.created = run, replace, not run.path.exists()

    def __enter__(self):
        self.run.lock()
        try:
            self.run.claim("lm", overwrite=self.replace, what="pretrain")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.run

    def __exit__(self, kind, error, traceback):
        self.run.unlock()
        if error is not None and self.created and [p.name for p in self.run.path.iterdir()] == [".lock"]:
            (self.run.path / ".lock").unlink()
            self.run.path.rmdir()


def _find_resume(run, config, log):
    """The newest intact checkpoint to resume from, with the run's tokenizer; None for a new run.

    Raises:
        RunError: the run was made with other `[model]` or `[data]` settings (named).
    """
    path, info = run.latest_checkpoint(log=log)
    if path is None:
        return None
    if run.config_path.is_file():
        from kerasllm.config import load_config

        saved = load_config(str(run.config_path))
        differences = _differences(saved, config)
        if differences:
            raise RunError(
                f"{run.path}: cannot resume: " + "; ".join(differences) + ". Use --restart to start "
                "over in this directory (or --set the old values back, or another --output)"
            )
    tokenizer = load_tokenizer(run.tokenizer_dir)
    recorded = run.identity().get("fingerprints", {}).get("tokenizer")
    if recorded and recorded != tokenizer.fingerprint():
        raise RunError(f"{run.tokenizer_dir}: differs from the tokenizer this run was trained with; use --restart")
    return {"path": path, "info": info, "tokenizer": tokenizer}


def _differences(saved, config):
    """`section.key is X here but Y in the run` for the [model] and [data] keys that differ."""
    found = []
    for section in ("model", "data"):
        old, new = dataclasses.asdict(getattr(saved, section)), dataclasses.asdict(getattr(config, section))
        for key, value in new.items():
            if section == "model" and key == "vocab_size" or key in DATA_KEYS_FREE_ON_RESUME:
                continue
            if key in old and old[key] != value:
                found.append(f"{section}.{key} is {value!r} here but {old[key]!r} in the run")
    return found


def _with_vocabulary(config, tokenizer):
    return config.replace(model=dataclasses.replace(config.model, vocab_size=tokenizer.vocabulary_size))


def _start(run, config, data):
    """Writes what a new run is: its tokenizer, config and fingerprints."""
    data.tokenizer.save(run.tokenizer_dir)
    config.save(run.config_path)
    run.record("lm", **_fingerprints(config, data.tokenizer))


def _fingerprints(config, tokenizer):
    def digest(payload):
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    data = {k: v for k, v in dataclasses.asdict(config.data).items() if k not in DATA_KEYS_FREE_ON_RESUME}
    if not data["sources"]:
        del data["sources"]  # a single-source run keeps the fingerprint it had before mixtures
    return {"model": digest(dataclasses.asdict(config.model)), "tokenizer": tokenizer.fingerprint(), "data": digest(data)}


def _setup(config, placement, log):
    """Placement, precision and the compiled model (weights initialised from `train.seed`)."""
    train = config.train
    if placement is None:
        placement = resolve_placement(
            train.strategy, config.model, train.model_parallel, log=log, layout=config.plan.layout
        )
    policy = resolve_precision(train.precision, placement.kind)
    jit_compile = resolve_jit(train.jit_compile, placement, log=log)
    micro_batch = train.batch_size // train.grad_accum_steps
    if micro_batch % placement.replicas:
        raise ConfigError(
            f"train.batch_size = {train.batch_size} (micro-batch {micro_batch}) must be divisible by "
            f"the {placement.replicas} replicas of {placement.kind}"
        )
    log(f"{placement.describe()}; precision {policy}; global batch {train.batch_size}"
        + (f" in {train.grad_accum_steps} micro-batches of {micro_batch}" if train.grad_accum_steps > 1 else ""))
    model = _build(config, placement, policy, config.model.vocab_size, jit_compile, train.seed)
    return placement, policy, model


def _run_state(config, resume):
    train = config.train
    micro_batch = train.batch_size // train.grad_accum_steps
    return RunState(
        resume["info"]["batches"] if resume else 0, train.grad_accum_steps,
        tokens_per_batch=micro_batch * config.model.block_size, max_steps=train.max_steps,
    )


def _plan(train, state, model):
    # TensorBoard's batch-level scalars (`log_every`) count calls, not steps: one step per call then.
    per_call = 1 if train.log_every else train.steps_per_execution
    plan = StepPlan(train.max_steps, train.eval_interval, train.checkpoint_every, train.grad_accum_steps,
                    state.batches, per_call)
    # Read by Keras when `fit` builds the train function: whole calls that end on epoch ends.
    model.steps_per_execution = plan.execution
    return plan


def _datasets(config, data, placement=None):
    """`(train_ds(start_batch), val_ds)`: the shuffled training stream from a data position,
    and validation windows spread evenly over the whole split (not its first pages), so
    `eval_steps` batches estimate the loss of all of it. Under `multi_worker` each worker
    reads only its own rows of every training batch."""
    if isinstance(data.train_ids, Mixture):  # windows of each source, dealt by weight
        make_train, val_ds = mixture_datasets(config, data.train_ids, data.val_ids)
    else:
        make_train, val_ds = _single_datasets(config, data)
    if placement is None or placement.kind != "multi_worker" or placement.strategy is None:
        return (lambda start_batch: make_train(start_batch, 1, 0)), val_ds

    def train_ds(start_batch):
        return per_worker_dataset(placement.strategy, lambda shards, index: make_train(start_batch, shards, index))

    return train_ds, val_ds


def _single_datasets(config, data):
    train, block = config.train, config.model.block_size
    val_stride = max(block, (len(data.val_ids) - block - 1) // max(1, train.eval_steps * train.batch_size))
    val_ds = lm_dataset(
        data.val_ids, block, train.batch_size, stride=val_stride, shuffle=False, repeat=False,
        max_batches=train.eval_steps, name="validation",
    )

    # the same shuffled stream every time; a resumed run skips what it saw
    def train_ds(start_batch, num_shards, shard_index):
        return lm_dataset(
            data.train_ids, block, train.batch_size // train.grad_accum_steps, stride=config.data.stride,
            shuffle=True, repeat=True, seed=config.data.seed, name="train", start_batch=start_batch,
            num_shards=num_shards, shard_index=shard_index,
        )

    return train_ds, val_ds


def _keras_workarounds(model, placement, val_ds):
    """The Keras internals multi-worker training needs patched, undone when training ends."""
    if placement.kind != "multi_worker":
        return contextlib.nullcontext()
    return multi_worker_reductions(model, placement.strategy, next(iter(val_ds)))


def _describe(config, model, plan, log):
    train, block = config.train, config.model.block_size
    log(
        f"model: {type(model).__name__} with {model.count_params():,} parameters "
        f"({config.model.n_layer} layers, {config.model.n_embd} wide, context {block}); "
        f"{train.max_steps} steps of {train.batch_size} x {block} tokens, validation every "
        f"{train.eval_interval}, checkpoint every {plan.every}"
        + (f", {plan.execution} steps per compiled call" if plan.execution > 1 else "")
    )
    if plan.done:
        log(f"already trained to step {plan.step} (train.max_steps = {train.max_steps}); use --restart to start over")


def _fit(model, plan, train_ds, val_ds, cbs, placement, verbose):
    """Runs the plan's fits (a resumed partial epoch first).

    Returns:
        `(history, signum)`: the merged Keras history, and the signal that stopped the run or None.
    """
    history = {}
    callbacks = cbs.ordered()
    with GracefulStop(cbs.interrupt) as stop, placement.fit_scope():
        for fit in plan.fits():
            if history and (model.stop_training or cbs.state.step >= plan.max_steps):
                break
            result = model.fit(
                train_ds(fit.start_batch), validation_data=val_ds, callbacks=callbacks,
                shuffle=False, verbose=verbose, **fit.kwargs(),  # the dataset is already shuffled
            )
            history = {k: history.get(k, []) + v for k, v in result.history.items()}
    return history, stop.signum


def _check_outcome(run, cbs, config, resume, signum):
    """Raises on a NaN loss (nothing checkpointed) or a signal (after checkpointing)."""
    guard, state = cbs.guard, cbs.state
    if guard.bad_step is not None:
        last, last_info = run.latest_checkpoint()
        kept = f"the last good checkpoint is {last} (step {last_info['step']})" if last else "no checkpoint was saved"
        raise RunError(
            f"training loss became {guard.bad_value} at step {guard.bad_step}; stopped, and {kept}. "
            "Lower train.learning_rate, set train.grad_clip, or use train.precision = \"float32\""
        )
    if resume:  # the config that resumed successfully becomes the run's config
        config.save(run.config_path)
    saved = cbs.checkpointer.save()
    if cbs.interrupt.requested:
        where = saved or run.latest_checkpoint()[0]
        raise Interrupted(
            f"interrupted at step {state.step}: checkpoint {where} saved; run the same command "
            "again to resume, or add --restart to start over",
            signum or signal.SIGINT,
        )


def _finish(run, config, model, tokenizer, history, cbs, val_ds, placement, policy, started):
    """Saves the model, the final validation loss, the curves and `metrics.json`."""
    train, block, state = config.train, config.model.block_size, cbs.state
    run.save_model(model)
    val_loss = history["val_loss"][-1] if history.get("val_loss") else None
    if val_loss is None or state.step % train.eval_interval:
        with placement.fit_scope():
            val_loss = float(model.evaluate(val_ds, verbose=0))
    parameters = model.count_params()
    plot_run(run.log_path, run.plot_path, title=f"{config.name}: {parameters:,} parameters")
    rates = cbs.throughput.rates() if cbs.throughput.epochs else {}
    best = cbs.checkpointer.best_val_loss
    early_stop = cbs.watchers.get("early_stop")
    metrics = {
        "train_loss": float(history["loss"][-1]) if history.get("loss") else None,
        "val_loss": float(val_loss),
        "val_perplexity": float(math.exp(min(val_loss, 700))),
        "val_bits_per_token": float(val_loss / math.log(2)),
        "best_val_loss": None if math.isinf(best) else best,
        "steps": state.step,
        "tokens_seen": state.step * train.batch_size * block,
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
        "early_stopped_at": early_stop.stopped_at if early_stop else None,
    }
    if tokenizer.kind in ("char", "byte"):
        metrics["val_bits_per_char"] = metrics["val_bits_per_token"]
    run.write_json(run.metrics_path, metrics)
    return metrics


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
    return RunDir(run_dir).read_metrics()
