"""Learning-rate schedules: warmup followed by cosine, linear, exponential or constant decay."""

import keras
from keras import ops



@keras.saving.register_keras_serializable(package="kerasllm")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak`, then a linear, exponential or constant decay.

    (Warmup + cosine is Keras' own `CosineDecay(warmup_target=...)`; this class covers the
    shapes Keras has no warmup for.)

    Args:
        peak: learning rate reached at the end of the warmup.
        warmup_steps: steps of the linear warmup (0: start at `peak`).
        decay: "linear" (to `floor` at `decay_steps`), "exponential" (times `decay_rate`
            every `decay_steps`, never below `floor`) or "constant".
        decay_steps: length of the decay after warmup (linear) or its period (exponential).
        floor: lowest learning rate.
        decay_rate: exponential decay factor per `decay_steps`.

    Examples:

    >>> schedule = WarmupDecay(1e-3, warmup_steps=10, decay="linear", decay_steps=90, floor=1e-4)
    >>> [round(float(schedule(s)), 6) for s in (0, 5, 10, 55, 100, 500)]
    [0.0, 0.0005, 0.001, 0.00055, 0.0001, 0.0001]
    """

    def __init__(self, peak, warmup_steps=0, decay="constant", decay_steps=1, floor=0.0, decay_rate=0.5):
        if decay not in ("linear", "exponential", "constant"):
            raise ValueError(f"decay = {decay!r}: expected 'linear', 'exponential' or 'constant'")
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.decay_steps = max(int(decay_steps), 1)
        self.floor = float(floor)
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.cast(max(self.warmup_steps, 1), "float32")
        after = ops.maximum(step - self.warmup_steps, 0.0)
        if self.decay == "linear":
            fraction = ops.minimum(after / self.decay_steps, 1.0)
            decayed = self.peak + (self.floor - self.peak) * fraction
        elif self.decay == "exponential":
            decayed = ops.maximum(self.peak * ops.power(self.decay_rate, after / self.decay_steps), self.floor)
        else:
            decayed = ops.convert_to_tensor(self.peak, "float32")
        if self.warmup_steps == 0:
            return decayed
        return ops.where(step < self.warmup_steps, self.peak * step / warmup, decayed)

    def get_config(self):
        return {
            "peak": self.peak, "warmup_steps": self.warmup_steps, "decay": self.decay,
            "decay_steps": self.decay_steps, "floor": self.floor, "decay_rate": self.decay_rate,
        }


@keras.saving.register_keras_serializable(package="kerasllm")
class PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
    """Evaluates `schedule` at optimizer updates, not micro-batches.

    Keras optimizers with `gradient_accumulation_steps` pass the micro-batch count to the
    schedule; this divides it by `steps`, so warmup and decay keep their length in updates and
    accumulation stays exactly equivalent to the large batch.
    """

    def __init__(self, schedule, steps):
        self.schedule = schedule
        self.steps = int(steps)

    def __call__(self, step):
        return self.schedule(ops.floor_divide(step, self.steps))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "steps": self.steps}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["steps"])


def build_schedule(train):
    """The learning rate (a schedule, or a float for `plateau`) a `TrainConfig` describes.

    `cosine` is nanoGPT's schedule: linear warmup to `learning_rate`, cosine decay to `min_lr`
    ending at step `lr_decay_steps` (0: `max_steps`), then `min_lr`. `linear` decays linearly
    over the same span; `exponential` multiplies the rate by `decay_rate` every `lr_decay_steps`
    (0: `max_steps`) steps, never below `min_lr`; `constant` holds `learning_rate` after warmup;
    `plateau` returns a plain float, which `ReduceOnPlateau` cuts when val loss stalls.
    A warmup longer than the decay is cut to end where the decay ends.

    Raises:
        ConfigError: `train` breaks a range or rule of `TrainConfig.validate`.

    Examples:

    >>> from kerasllm.config import TrainConfig
    >>> schedule = build_schedule(TrainConfig(schedule="linear", max_steps=100, warmup_steps=10))
    >>> round(float(schedule(100)), 6)
    0.0001
    """
    train.validate()  # ranges and rules of [train], kept in kerasllm.config
    if train.schedule == "plateau":
        return train.learning_rate
    decay_end = train.lr_decay_steps or train.max_steps
    warmup = min(train.warmup_steps, decay_end)
    if train.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            warmup_target=train.learning_rate,
            warmup_steps=warmup,
            decay_steps=max(decay_end - warmup, 1),
            alpha=train.min_lr / train.learning_rate,
        )
    return WarmupDecay(
        train.learning_rate, warmup_steps=warmup, decay=train.schedule,
        decay_steps=(decay_end - warmup) if train.schedule == "linear" else decay_end,
        floor=train.min_lr, decay_rate=train.decay_rate,
    )
