"""Optimizers from a `TrainConfig`: SGD, Adam, AdamW that also report the gradient norm."""

import keras
from keras import ops

from kerasllm.errors import ConfigError
from kerasllm.training.schedules import PerUpdate, build_schedule


class GradNormMixin:
    """Records the global gradient norm (before clipping) in `grad_norm` at every update.

    Keras clips in `_clip_gradients`, on the averaged gradient when accumulating; this mixin
    computes the norm there once, stores it and clips with it, so logging it costs nothing extra.
    Under `tf.distribute` Keras clips each replica's gradient before the all-reduce, so there
    the norm (and the clipping) is replica 0's.
    """

    def build(self, variables):
        super().build(variables)
        self._grad_norm = self.add_variable(
            (), initializer="zeros", dtype="float32", aggregation="only_first_replica", name="grad_norm"
        )

    @property
    def grad_norm(self):
        return self._grad_norm

    def _clip_gradients(self, grads):
        present = [g for g in grads if g is not None]
        norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(g, "float32"))) for g in present))
        self._grad_norm.assign(norm)
        if self.global_clipnorm and self.global_clipnorm > 0:
            scale = ops.minimum(1.0, self.global_clipnorm / ops.maximum(norm, 1e-12))
            return [g if g is None else g * ops.cast(scale, g.dtype) for g in grads]
        return super()._clip_gradients(grads)


@keras.saving.register_keras_serializable(package="kerasllm")
class SGD(GradNormMixin, keras.optimizers.SGD):
    """`keras.optimizers.SGD` that records the gradient norm."""


@keras.saving.register_keras_serializable(package="kerasllm")
class Adam(GradNormMixin, keras.optimizers.Adam):
    """`keras.optimizers.Adam` that records the gradient norm."""


@keras.saving.register_keras_serializable(package="kerasllm")
class AdamW(GradNormMixin, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` that records the gradient norm."""


def no_decay_variables(model, decay_embeddings=False):
    """Variables AdamW must not decay: biases and norm scales (< 2-D), and embedding tables
    unless `decay_embeddings`."""
    return [
        v for v in model.trainable_variables
        if len(v.shape) < 2 or (not decay_embeddings and "embedding" in v.path)
    ]


def inner_optimizer(optimizer):
    """The optimizer inside a `LossScaleOptimizer` (or `optimizer` itself)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def build_optimizer(train, model):
    """The optimizer `train.optimizer` names, with its schedule, clipping and accumulation.

    AdamW decays only >=2-D kernels (not biases, norms, or embeddings unless
    `train.decay_embeddings`). `train.grad_accum_steps > 1` averages that many micro-batch
    gradients before each update (Keras' `gradient_accumulation_steps`).

    Raises:
        ConfigError: `train` breaks a range or rule of `TrainConfig.validate`.

    Examples:

    >>> from kerasllm.config import ModelConfig, TrainConfig
    >>> from kerasllm.models import build_model
    >>> model = build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, block_size=8), vocab_size=12)
    >>> type(build_optimizer(TrainConfig(optimizer="sgd", nesterov=True), model)).__name__
    'SGD'
    """
    train.validate()  # ranges and rules of [train], kept in kerasllm.config
    learning_rate = build_schedule(train)
    if train.grad_accum_steps > 1 and not isinstance(learning_rate, float):
        learning_rate = PerUpdate(learning_rate, train.grad_accum_steps)
    common = dict(
        learning_rate=learning_rate,
        global_clipnorm=train.grad_clip or None,
        gradient_accumulation_steps=train.grad_accum_steps if train.grad_accum_steps > 1 else None,
    )
    if train.optimizer == "sgd":
        return SGD(momentum=train.momentum, nesterov=train.nesterov, **common)
    if train.optimizer == "adam":
        return Adam(beta_1=train.beta1, beta_2=train.beta2, epsilon=train.epsilon, **common)
    optimizer = AdamW(
        weight_decay=train.weight_decay, beta_1=train.beta1, beta_2=train.beta2, epsilon=train.epsilon, **common
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model, train.decay_embeddings))
    return optimizer


def apply_regularization(model, l1=0.0, l2=0.0):
    """Adds an L1/L2 penalty on every >=2-D kernel (not embeddings) to the model's loss.

    Keras sums `variable.regularizer(variable)` over trainable weights into `model.losses`, which
    `fit` adds to the loss, so setting it after building is all that is needed.

    Returns:
        The number of regularized variables.
    """
    if l1 < 0 or l2 < 0:
        raise ConfigError(f"train.l1 = {l1}, train.l2 = {l2}: expected numbers >= 0")
    if not (l1 or l2):
        return 0
    kernels = [v for v in model.trainable_variables if len(v.shape) >= 2 and "embedding" not in v.path]
    for variable in kernels:
        variable.regularizer = keras.regularizers.L1L2(l1=l1, l2=l2)
    return len(kernels)
