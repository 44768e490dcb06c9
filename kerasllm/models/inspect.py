"""Looking inside a trained language model: attention maps and per-part gradient norms.

    from kerasllm.models.inspect import attention_maps, gradient_norms
"""

import math

import keras
import numpy as np
from keras import ops


def attention_maps(model, token_ids):
    """Attention probabilities of every layer and head of a `kerasllm.models.GPT`.

    The model attends through the fused `keras.ops.dot_product_attention`, which never
    materializes the probabilities; each block's attention layer recomputes them from its own
    QKV projection and rotary embedding (`CausalSelfAttention.attention_probabilities`).

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
    x = model.embed(token_ids)  # (B, T, C)
    maps = []
    for block in model.blocks:
        maps.append(block.attn.attention_probabilities(block.norm_1(x)))  # (B, H, T, T)
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
