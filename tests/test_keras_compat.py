"""Pins every private Keras internal kerasllm uses (see `kerasllm/_keras_compat.py`).

A Keras release that renames, removes or re-signs one of them fails here, by name, instead of
deep inside a multi-worker run, a LoRA merge or a SavedModel export.
"""

import inspect

import keras
import numpy as np
import pytest

from kerasllm import _keras_compat as compat


def _parameters(function):
    return list(inspect.signature(function).parameters)


def test_tensorflow_trainer_internals_have_the_signatures_used():
    trainer = compat.tensorflow_trainer_module()
    assert _parameters(trainer.reduce_per_replica) == ["values", "strategy", "reduction"]
    assert _parameters(trainer._collective_all_reduce_multi_worker) == ["strategy"]
    assert _parameters(trainer._is_per_replica_instance) == ["obj"]
    # fit/evaluate must look the reduction up by module global at call time, or patching it
    # would change nothing.
    source = inspect.getsource(trainer)
    assert "reduce_per_replica(" in source.split("def reduce_per_replica", 1)[0]


def test_trainer_symbolic_build_internals_exist():
    from keras.src.trainers.trainer import Trainer

    assert _parameters(Trainer._symbolic_build) == ["self", "iterator", "data_batch"]
    tf_trainer = compat.tensorflow_trainer_module().TensorFlowTrainer
    assert _parameters(tf_trainer._maybe_symbolic_build) == ["self", "iterator", "data_batch"]
    fit_source = inspect.getsource(keras.Model.fit)
    assert "self._maybe_symbolic_build(" in fit_source


def test_layer_tracking_internals_exist():
    assert _parameters(keras.layers.Layer._flatten_layers) == ["self", "include_self", "recursive"]
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    assert [v.name for v in dense._trainable_variables] == ["kernel", "bias"]
    assert list(dense._non_trainable_variables) == []


def test_optimizer_clip_gradients_is_still_the_hook_apply_calls():
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    assert _parameters(BaseOptimizer._clip_gradients) == ["self", "grads"]
    assert "self._clip_gradients(" in inspect.getsource(BaseOptimizer)


def test_tensorflow_core_slice_update_exists():
    from keras.src.backend.tensorflow import core

    assert _parameters(core.slice_update) == ["inputs", "start_indices", "updates"]


def test_installed_keras_is_within_the_checked_range():
    def version(text):
        return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())

    oldest, newest = (version(v) for v in compat.KERAS_CHECKED)
    installed = version(keras.__version__)
    assert oldest <= installed, f"Keras {keras.__version__} is older than any checked in _keras_compat"
    if installed > newest:
        pytest.xfail(f"Keras {keras.__version__} is newer than {compat.KERAS_CHECKED[1]}: re-check _keras_compat")


def _compiled_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(loss="mse", optimizer="sgd")
    return model


def test_multi_worker_reductions_leaves_nothing_patched():
    import tensorflow as tf

    trainer = compat.tensorflow_trainer_module()
    original = trainer.reduce_per_replica
    model = _compiled_model()
    strategy = tf.distribute.get_strategy()
    batch = (np.ones((2, 3), "float32"), np.ones((2, 1), "float32"))
    with compat.multi_worker_reductions(model, strategy, batch):
        assert trainer.reduce_per_replica is not original
        with compat.multi_worker_reductions(model, strategy, batch):  # re-entrant
            assert model._maybe_symbolic_build(data_batch=batch) is None
        assert trainer.reduce_per_replica is not original
        assert "_maybe_symbolic_build" in vars(model)
        history = model.fit(*batch, epochs=1, verbose=0)  # a non-collective strategy: Keras' own path
    assert trainer.reduce_per_replica is original
    assert "_maybe_symbolic_build" not in vars(model)
    assert np.isfinite(history.history["loss"][0])


def test_multi_worker_reductions_restores_on_error():
    import tensorflow as tf

    trainer = compat.tensorflow_trainer_module()
    original = trainer.reduce_per_replica
    model = _compiled_model()
    batch = (np.ones((2, 3), "float32"), np.ones((2, 1), "float32"))
    with pytest.raises(RuntimeError, match="boom"):
        with compat.multi_worker_reductions(model, tf.distribute.get_strategy(), batch):
            raise RuntimeError("boom")
    assert trainer.reduce_per_replica is original
    assert "_maybe_symbolic_build" not in vars(model)


def test_multi_worker_reduction_averages_scalars_over_replicas():
    """The replacement's own branch: a collective strategy's scalar logs are averaged with
    `axis=None` (Keras' `axis=0` fails on scalars)."""
    trainer = compat.tensorflow_trainer_module()
    model = _compiled_model()
    calls = []

    class FakeCollective:
        def scope(self):
            import contextlib

            return contextlib.nullcontext()

        def reduce(self, op, value, axis):
            calls.append((op, axis))
            return value

    strategy = FakeCollective()
    batch = (np.ones((2, 3), "float32"), np.ones((2, 1), "float32"))
    is_collective, is_per_replica = trainer._collective_all_reduce_multi_worker, trainer._is_per_replica_instance
    trainer._collective_all_reduce_multi_worker = lambda s: s is strategy
    trainer._is_per_replica_instance = lambda v: True
    try:
        with compat.multi_worker_reductions(model, strategy, batch):
            out = trainer.reduce_per_replica({"loss": 1.5}, strategy, "auto")
    finally:
        trainer._collective_all_reduce_multi_worker, trainer._is_per_replica_instance = is_collective, is_per_replica
    assert out == {"loss": 1.5}
    assert calls == [("MEAN", None)]


def test_deferred_variable_internals_give_and_forget_a_first_value():
    with keras.StatelessScope(initialize_variables=False):
        variable = keras.Variable(initializer="zeros", shape=(2, 3), dtype="float32")
    assert compat.is_deferred(variable)
    compat.initialize_deferred(variable, keras.ops.ones((2, 3)))
    compat.forget_deferred([variable])  # else the next StatelessScope to close initializes it again
    assert not compat.is_deferred(variable)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), np.ones((2, 3)))

    with keras.StatelessScope(initialize_variables=False):
        other = keras.Variable(initializer="ones", shape=(4,), dtype="float32")
    compat.forget_deferred([other])
    with keras.StatelessScope():  # closing one initializes whatever is still pending
        pass
    assert compat.is_deferred(other)  # forgotten: Keras left it alone
    compat.initialize_deferred(other)  # its own initializer
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(other), np.ones(4))
