"""Optimizer and learning-rate schedule from a `TrainConfig`."""

import keras

from kerasllm.errors import ConfigError


def build_schedule(train):
    """Linear warmup to `learning_rate`, then cosine decay to `min_lr` (nanoGPT's schedule).

    The decay ends at step `lr_decay_steps` (0 means `max_steps`) and the rate stays at
    `min_lr` afterwards.
    """
    if train.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate = {train.learning_rate}: expected a positive number")
    if not 0 <= train.min_lr <= train.learning_rate:
        raise ConfigError(f"train.min_lr = {train.min_lr}: expected 0 <= min_lr <= learning_rate")
    decay_end = train.lr_decay_steps or train.max_steps
    warmup = min(train.warmup_steps, decay_end)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        warmup_target=train.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(decay_end - warmup, 1),
        alpha=train.min_lr / train.learning_rate,
    )


def no_decay_variables(model, decay_embeddings=False):
    """Variables AdamW must not decay: biases and norm scales (< 2-D), and embedding tables
    unless `decay_embeddings`."""
    return [
        v for v in model.trainable_variables
        if len(v.shape) < 2 or (not decay_embeddings and "embedding" in v.path)
    ]


def build_optimizer(train, model):
    """AdamW with the config's betas, decoupled weight decay on >=2-D kernels and global-norm clipping."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=build_schedule(train),
        weight_decay=train.weight_decay,
        beta_1=train.beta1,
        beta_2=train.beta2,
        global_clipnorm=train.grad_clip or None,
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model, train.decay_embeddings))
    return optimizer
