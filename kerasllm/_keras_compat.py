"""Every use of a private Keras internal, in one place, with the versions it was checked on.

kerasllm needs a few things Keras 3 has no public API for. Each one is named here, with what it
works around and the Keras versions whose source was read to confirm that the internal exists
with the signature used (`tests/test_keras_compat.py` pins each of them, so a Keras upgrade that
changes one fails there, by name, instead of deep inside a training run).

| Internal | Used for | Checked on |
|---|---|---|
| `keras.src.backend.tensorflow.trainer.reduce_per_replica`, `_collective_all_reduce_multi_worker`, `_is_per_replica_instance` | `multi_worker_reductions` | Keras 3.8.0, 3.11.3, 3.13.2, 3.15.1 |
| `Trainer._symbolic_build(iterator=None, data_batch=None)`, `_maybe_symbolic_build` | `multi_worker_reductions` | Keras 3.8.0 - 3.15.1 |
| `Layer._flatten_layers(include_self, recursive)`, `Layer._trainable_variables`, `Layer._non_trainable_variables` | `kerasllm.models.lora` | Keras 3.8.0 - 3.15.1 |
| `BaseOptimizer._clip_gradients(grads)` (overridden) | `kerasllm.training.optimizers.GradNormMixin` | Keras 3.8.0 - 3.15.1 |
| `keras.src.backend.tensorflow.core.slice_update` (swapped while tracing) | `tensorflow_slice_update`, for `kerasllm.export.graph.portable_ops` | Keras 3.8.0 - 3.15.1 |
| `Variable._value is None`, `Variable._initializer`, `Variable._deferred_initialize()`, the global `uninitialized_variables` list | `is_deferred`, `initialize_deferred`, `forget_deferred`, for `kerasllm.checkpoints.hf.load_weights` | Keras 3.15.1 |

Tested together with TensorFlow 2.21.0 and keras-hub 0.32.0.
"""

import contextlib

KERAS_CHECKED = ("3.8.0", "3.15.1")
"""The oldest and newest Keras versions whose source was read for the internals above."""


def tensorflow_trainer_module():
    """`keras.src.backend.tensorflow.trainer`: where Keras' TF `fit` reduces values over replicas."""
    from keras.src.backend.tensorflow import trainer

    return trainer


@contextlib.contextmanager
def multi_worker_reductions(model, strategy, batch):
    """Lets `model.fit` / `evaluate` run under `tf.distribute.MultiWorkerMirroredStrategy`.

    Keras 3 (checked 3.8.0 - 3.15.1 with TF 2.21) fails there in two places:

    * `fit` builds the model's metrics from the first *distributed* batch averaged with
      `strategy.reduce("MEAN")`, which cannot average int32 token ids ("Attempt to convert a
      value (PerReplica...)"). Here the model is built from one local `batch` instead, and that
      step is skipped (`model._maybe_symbolic_build` becomes a no-op for this model only).
    * each step's scalar logs are averaged with `reduce("MEAN", v, axis=0)`, which fails on
      scalars ("Invalid reduction dimension 0"). Here `reduce_per_replica` averages them over
      replicas (`axis=None`) instead, for collective multi-worker strategies only; every other
      strategy takes Keras' own path.

    Both changes are undone on exit, so nothing is left patched once training returns.
    Re-entrant: a nested use leaves the outer patch in place.

    Args:
        model: a Keras model, compiled under `strategy.scope()`.
        strategy: the `tf.distribute` strategy `fit` runs under.
        batch: one local batch `(x, y)` (or `x`) of the data `fit` will see.

    Examples:

    >>> import keras, numpy as np, tensorflow as tf
    >>> strategy = tf.distribute.get_strategy()
    >>> model = keras.Sequential([keras.layers.Dense(1)])
    >>> model.compile(loss="mse")
    >>> trainer = tensorflow_trainer_module()
    >>> original = trainer.reduce_per_replica
    >>> with multi_worker_reductions(model, strategy, (np.ones((2, 3)), np.ones((2, 1)))):
    ...     trainer.reduce_per_replica is original
    False
    >>> trainer.reduce_per_replica is original, "_maybe_symbolic_build" in vars(model)
    (True, False)
    """
    import keras

    trainer = tensorflow_trainer_module()
    original = trainer.reduce_per_replica
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    had_own = "_maybe_symbolic_build" in vars(model)
    previous_build = vars(model).get("_maybe_symbolic_build")
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if trainer._is_per_replica_instance(v) else v,
                values,
            )
        return original(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica
    try:
        yield model
    finally:
        trainer.reduce_per_replica = original
        if had_own:
            model._maybe_symbolic_build = previous_build
        else:
            del model._maybe_symbolic_build


def flatten_layers(layer, include_self=True, recursive=True):
    """The layers tracked by `layer` (Keras' `Layer._flatten_layers`), depth first.

    Examples:

    >>> import keras
    >>> block = keras.layers.Dense(2, name="d")
    >>> [sub.name for sub in flatten_layers(block)]
    ['d']
    """
    return layer._flatten_layers(include_self=include_self, recursive=recursive)


def owns_variables(layer):
    """True when `layer` itself (not a sublayer) holds a trainable or non-trainable variable.

    Examples:

    >>> import keras
    >>> dense = keras.layers.Dense(2)
    >>> dense.build((None, 3))
    >>> owns_variables(dense), owns_variables(keras.layers.Dropout(0.1))
    (True, False)
    """
    return bool(layer._trainable_variables or layer._non_trainable_variables)


@contextlib.contextmanager
def tensorflow_slice_update(replacement):
    """Makes `keras.ops.slice_update` call `replacement(inputs, start_indices, updates)` on the
    TensorFlow backend while the context is open (the export traces its serving graphs with a
    version that emits only core TF ops); Keras' own is restored on exit.

    Examples:

    >>> import numpy as np
    >>> from keras import ops
    >>> with tensorflow_slice_update(lambda inputs, start_indices, updates: "replaced"):
    ...     ops.slice_update(np.zeros(3), (0,), np.ones(1))
    'replaced'
    >>> ops.convert_to_numpy(ops.slice_update(np.zeros(3), (1,), np.ones(1))).tolist()
    [0.0, 1.0, 0.0]
    """
    from keras.src.backend.tensorflow import core

    original = core.slice_update
    core.slice_update = replacement
    try:
        yield
    finally:
        core.slice_update = original


def is_deferred(variable):
    """True for a variable created inside `keras.StatelessScope(initialize_variables=False)`
    that has no value yet (Keras marks it with `_value = None`)."""
    return getattr(variable, "_value", True) is None


def initialize_deferred(variable, value=None):
    """Gives a deferred variable its first value: `value` (a tensor the variable may adopt as its
    own buffer, so no copy is made), or its own initializer's when `value` is `None`."""
    if value is not None:
        variable._initializer = lambda shape, dtype: value  # read once, by the next line
    variable._deferred_initialize()


def forget_deferred(variables):
    """Takes `variables` off Keras' global list of variables waiting for a value.

    Otherwise the next `StatelessScope` to close would initialize them again, or fail on those
    already given a value by `initialize_deferred`.
    """
    from keras.src.backend.common import global_state

    pending = global_state.get_global_attribute("uninitialized_variables")
    if pending:
        ours = {id(v) for v in variables}
        global_state.set_global_attribute("uninitialized_variables", [v for v in pending if id(v) not in ours])
