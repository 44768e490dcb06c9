"""What every serving module shares: weights and tokenizer tables it owns, portable tracing."""

import contextlib
import functools

import tensorflow as tf

from kerasllm._keras_compat import tensorflow_slice_update


def model_variables(model):
    """The `tf.Variable`s behind a Keras model's weights, for a `tf.Module` to own and save."""
    return [variable.value for variable in model.variables]


def tokenizer_resources(tokenizer):
    """Builds a tokenizer's graph tables eagerly and returns the TF objects that hold them.

    Tokenizers create lookup tables (or tensorflow-text ops) lazily on the first `tf_encode` /
    `tf_decode`. Doing that once here, eagerly, makes them real resources rather than objects of
    a traced graph; attaching the returned list to a `tf.Module` makes `tf.saved_model.save`
    write them (a SavedModel only saves resources its object graph reaches).
    """
    tokenizer.tf_encode(tf.constant(["a"]))
    tokenizer.tf_decode(tf.constant([[tokenizer.eos_id]], tf.int32))
    found, seen = [], set()

    def visit(value, depth):
        if id(value) in seen or depth > 6:
            return
        seen.add(id(value))
        # Keras objects (keras-hub tokenizer layers, Keras variables) are looked into, never
        # saved themselves: reviving them would make the loading process import keras.
        from_keras = type(value).__module__.split(".")[0] in ("keras", "keras_hub")
        if not from_keras and isinstance(value, (tf.Variable, tf.Module, tf.__internal__.tracking.Trackable)):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item, depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item, depth + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            for item in vars(value).values():
                visit(item, depth + 1)

    for attribute in vars(tokenizer).values():
        visit(attribute, 0)
    return found


def encode(tokenizer, texts):
    """`tokenizer.tf_encode` of a string `[batch]` as an int32 RaggedTensor `[batch, None]`."""
    ids = tokenizer.tf_encode(texts)
    if not isinstance(ids, tf.RaggedTensor):
        ids = tf.RaggedTensor.from_tensor(ids)
    return tf.cast(ids, tf.int32)


def check_ids(token_ids, vocab_size, where):
    """Fails with InvalidArgument (not a crash or a silent clamp) on an id outside the vocabulary."""
    return [
        tf.debugging.assert_non_negative(
            token_ids, message=f"{where}: token ids must be >= 0"
        ),
        tf.debugging.assert_less(
            token_ids, tf.constant(vocab_size, token_ids.dtype),
            message=f"{where}: token ids must be < vocab_size = {vocab_size}",
        ),
    ]


def _portable_slice_update(inputs, start_indices, updates):
    # Same result as keras' XlaDynamicUpdateSlice (start clamped so the update fits), with plain
    # TF ops: that XLA op needs the XLA JIT at run time, which TF Serving leaves off by default.
    inputs = tf.convert_to_tensor(inputs)
    updates = tf.cast(updates, inputs.dtype)
    shape, size = tf.shape(inputs), tf.shape(updates)
    start = tf.clip_by_value(
        tf.cast(tf.stack(list(start_indices)), tf.int32), 0, shape - size
    )
    paddings = tf.stack([start, shape - size - start], axis=1)
    placed = tf.pad(updates, paddings)
    mask = tf.pad(tf.ones_like(updates, dtype=tf.bool), paddings)
    return tf.where(mask, placed, inputs)


@contextlib.contextmanager
def portable_ops():
    """While tracing serving functions, `keras.ops.slice_update` emits only core TF ops.

    The models' KV cache is written with `keras.ops.slice_update`, which the TensorFlow backend
    lowers to `XlaDynamicUpdateSlice`. A SavedModel holding that op runs only where the XLA JIT
    is linked and enabled; TF Serving ships with it off (`--xla_cpu_compilation_enabled`).
    """
    with tensorflow_slice_update(_portable_slice_update):
        yield


def traced_portably(function):
    """Wraps a function to be traced by `tf.function` so every trace (also the one
    `tf.saved_model.save` makes) runs under `portable_ops`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with portable_ops():
            return function(*args, **kwargs)

    return wrapper


def saved_op_types(export_dir):
    """Every op type in a SavedModel's graph and function library (for checks and docs)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(f"{export_dir}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def non_core_ops(op_types):
    """The op types that core TensorFlow does not define (tensorflow-text's, for instance)."""
    return sorted(op for op in op_types if not hasattr(tf.raw_ops, op))
