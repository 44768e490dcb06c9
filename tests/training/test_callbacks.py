"""Each training callback on its own, driven by hand (no fit), and the order they rely on."""

import math

import keras
import numpy as np
import pytest

from kerasllm.config import TrainConfig
from kerasllm.training.callbacks import (
    Checkpointer,
    EarlyStop,
    Interrupt,
    NaNGuard,
    ReduceOnPlateau,
    RunLog,
    RunState,
    Throughput,
    check_order,
    make_callbacks,
    read_log,
)
from kerasllm.training.rundir import RunDir


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dropout(0.1, seed=1)(keras.layers.Dense(2)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def attach(callback, model):
    callback.set_model(model)
    model.stop_training = False
    return callback


def test_run_state_counts_batches_steps_and_stops_at_max_steps(model):
    state = attach(RunState(batches=4, accum=2, max_steps=4), model)
    assert state.step == 2
    for _ in range(3):
        state.on_train_batch_end(0, {})
    assert (state.batches, state.step, model.stop_training) == (7, 3, False)
    state.on_train_batch_end(0, {})
    assert model.stop_training
    logs = {"loss": 1.0, "tokens/s": 5.0, "last_val_loss": 2.0}
    state.on_epoch_end(0, logs)
    assert logs == {"loss": 1.0}


def test_run_state_counts_every_batch_of_a_multi_step_execution(model):
    # steps_per_execution = 5: Keras calls begin(first index) and end(last index) once per 5 batches.
    state = attach(RunState(batches=0, max_steps=12), model)
    for first in (0, 5):
        state.on_train_batch_begin(first)
        state.on_train_batch_end(first + 4, {})
    assert (state.batches, model.stop_training) == (10, False)
    state.on_train_batch_begin(10)
    state.on_train_batch_end(14, {})
    assert (state.batches, model.stop_training) == (15, True)


def test_checkpointer_reads_the_loss_only_when_it_saves(model, tmp_path):
    class Loss:  # a device tensor stand-in that counts host reads
        reads = 0

        def __float__(self):
            Loss.reads += 1
            return 2.5

    state = RunState()
    checkpointer = attach(Checkpointer(RunDir(tmp_path / "run"), state, every=1), model)
    for _ in range(3):
        checkpointer.on_train_batch_end(0, {"loss": Loss()})
    assert Loss.reads == 0
    assert checkpointer.info("x")["loss"] == 2.5 and Loss.reads == 1


def test_nan_guard_remembers_the_first_bad_step(model):
    state = RunState(batches=10)
    guard = attach(NaNGuard(state), model)
    guard.on_train_batch_end(0, {"loss": 1.5})
    assert guard.bad_step is None and not model.stop_training
    guard.on_train_batch_end(0, {"loss": float("inf")})
    guard.on_train_batch_end(0, {"loss": float("nan")})
    assert (guard.bad_step, guard.bad_value, model.stop_training) == (10, math.inf, True)


def test_interrupt_stops_after_the_batch_once_requested(model):
    interrupt = attach(Interrupt(), model)
    interrupt.on_train_batch_end(0, {})
    assert not model.stop_training
    interrupt.request()
    interrupt.on_train_batch_end(0, {})
    assert model.stop_training


def test_plateau_cuts_the_rate_after_patience_and_its_state_round_trips(model):
    optimizer = keras.optimizers.SGD(0.1)
    plateau = attach(ReduceOnPlateau(optimizer, factor=0.5, patience=2, min_lr=0.02, log=lambda *_: None), model)
    for val_loss in (1.0, 1.1, 1.2, 1.3, 1.4):
        plateau.on_epoch_end(0, {"val_loss": val_loss})
    assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(0.025)  # 0.1 -> 0.05 -> 0.025
    plateau.on_epoch_end(0, {"val_loss": 1.7})
    plateau.on_epoch_end(0, {"val_loss": 1.8})
    assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(0.02)  # floored at min_lr
    copy = ReduceOnPlateau(optimizer, patience=2)
    copy.set_state(plateau.get_state())
    assert copy.get_state() == plateau.get_state()
    plateau.on_epoch_end(0, {"loss": 1.0})  # an epoch without validation changes nothing
    assert copy.get_state() == plateau.get_state()


def test_early_stop_stops_after_patience_evaluations_without_improvement(model):
    state = RunState(batches=30)
    stop = attach(EarlyStop(state, patience=2, log=lambda *_: None), model)
    for val_loss in (2.0, 1.5, 1.6):
        stop.on_epoch_end(0, {"val_loss": val_loss})
    assert not model.stop_training
    stop.on_epoch_end(0, {"val_loss": 1.5})
    assert model.stop_training and stop.stopped_at == 30


def test_checkpointer_saves_on_schedule_keeps_the_newest_and_the_best(model, tmp_path):
    run = RunDir(tmp_path).create()
    state = RunState(accum=1)
    guard = NaNGuard(state)
    checkpointer = attach(Checkpointer(run, state, every=2, keep=2, guard=guard), model)
    for step, val_loss in zip(range(1, 9), (None, 3.0, None, 2.0, None, 2.5, None, 2.6)):
        state.batches = step
        checkpointer.on_train_batch_end(0, {"loss": 1.0})
        checkpointer.on_epoch_end(0, {} if val_loss is None else {"val_loss": val_loss})
    assert sorted(info["step"] for info, _ in run.checkpoints()) == [6, 8]
    assert run.read_json(run.best_info_path)["step"] == 4 and checkpointer.best_val_loss == 2.0
    assert run.latest_checkpoint()[1]["step"] == 8
    assert checkpointer.save() is None  # nothing new since step 8
    state.batches = 9
    guard.bad_step = 9
    assert checkpointer.save() is None  # a NaN run is never checkpointed
    restored = attach(Checkpointer(run, RunState(), every=2), model)
    restored.restore(run.latest_checkpoint()[1])
    assert restored.best_val_loss == 2.0 and restored.last_saved == 8


def test_checkpointer_restores_dropout_rng_and_watcher_state(model, tmp_path):
    run = RunDir(tmp_path).create()
    state = RunState(batches=2)
    watcher = EarlyStop(state, patience=5)
    watcher.best, watcher.wait = 1.25, 3
    checkpointer = attach(Checkpointer(run, state, every=2, stateful={"early_stop": watcher}), model)
    checkpointer.save()
    info = run.latest_checkpoint()[1]
    rng_before = {k: v for k, v in info["rng"].items()}
    assert rng_before, "the dropout seed generator state is saved"
    model.predict(np.zeros((1, 3)), verbose=0)  # does not advance it; training would
    other = EarlyStop(state, patience=5)
    attach(Checkpointer(run, state, every=2, stateful={"early_stop": other}), model).restore(info)
    assert (other.best, other.wait) == (1.25, 3)


def test_throughput_excludes_the_compiling_epoch(model, monkeypatch):
    clock = iter([0.0, 100.0, 100.0, 101.0, 101.0, 102.0]).__next__
    monkeypatch.setattr("kerasllm.training.callbacks.time.perf_counter", clock)
    state = RunState(tokens_per_batch=10)
    throughput = attach(Throughput(state, flops_per_token=2.0, peak_flops=100.0), model)
    for _ in range(3):  # three epochs of 5 batches; the first takes 100 s (compilation)
        throughput.on_epoch_begin(0)
        state.batches += 5
        throughput.on_epoch_end(0, {})
    assert throughput.tokens_per_second() == pytest.approx(50.0)
    assert throughput.rates() == pytest.approx({"tokens_per_second": 50.0, "model_flops_per_second": 100.0, "mfu": 1.0})


def test_run_log_writes_one_row_per_interval_and_drops_rows_past_the_resume_step(model, tmp_path):
    path = tmp_path / "log.csv"
    state = RunState(max_steps=6)
    log = attach(RunLog(path, state, model.optimizer, every=2), model)
    for step in range(1, 6):
        state.batches = step
        log.on_epoch_end(0, {"loss": 1.0, **({"val_loss": 2.0} if step == 4 else {})})
    assert [r["step"] for r in read_log(path)] == ["2", "4"]
    assert read_log(path)[1]["val_perplexity"] == str(math.exp(2.0))
    attach(RunLog(path, RunState(batches=2), model.optimizer, resume_step=2, every=2), model)
    assert [r["step"] for r in read_log(path)] == ["2"]


def test_make_callbacks_fixes_the_order_and_check_order_rejects_others(model, tmp_path):
    run = RunDir(tmp_path).create()
    train = TrainConfig(schedule="plateau", early_stop_patience=2, eval_interval=4, checkpoint_every=2)
    extra = keras.callbacks.Callback()
    cbs = make_callbacks(run, model, train, RunState(), extra=[extra])
    ordered = cbs.ordered()
    assert ordered[0] is cbs.state and ordered.index(cbs.log) < ordered.index(cbs.checkpointer)
    assert ordered.index(extra) < ordered.index(cbs.log) and cbs.log.every == 2
    assert set(cbs.watchers) == {"plateau", "early_stop"}
    with pytest.raises(ValueError, match="RunState must be the first"):
        check_order([cbs.guard, cbs.state])
    with pytest.raises(ValueError, match="RunLog must come before Checkpointer"):
        check_order([cbs.state, cbs.checkpointer, cbs.log])
    with pytest.raises(ValueError, match="Throughput must come before RunLog"):
        check_order([cbs.state, cbs.log, cbs.throughput])
