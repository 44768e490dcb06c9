"""From optimizer steps to Keras `fit` calls: where epochs end, when to validate, where to resume.

A pretraining run counts optimizer steps (`train.max_steps`, `train.eval_interval`,
`train.checkpoint_every`), while Keras counts epochs of `steps_per_epoch` batches. `StepPlan`
makes one Keras epoch `chunk = gcd(eval_interval, checkpoint_every)` optimizer steps, so every
validation and every checkpoint falls on an epoch end, and `validation_freq` picks the epochs
that validate. With gradient accumulation an optimizer step is `accum` batches.

A run resumed from a checkpoint taken inside an epoch (Ctrl-C, SIGTERM) first finishes that
epoch with a short `fit`, then continues with whole epochs: the same epoch ends, validations and
checkpoints as an uninterrupted run. This module is pure Python (no Keras) so that every
combination can be unit tested.

With `steps_per_execution = k > 1` Keras runs k batches per compiled call and always whole
calls (an epoch of `steps_per_epoch` batches runs `ceil(steps_per_epoch / k)` calls), so the
plan runs `execution` batches per call: the largest divisor of k that also divides the epoch
length, `max_steps` and the resume position, so that epochs and the run end where they should.

Examples:

>>> plan = StepPlan(max_steps=10, eval_interval=4, checkpoint_every=2)
>>> [(f.initial_epoch, f.epochs, f.steps_per_epoch, f.validation_freq) for f in plan.fits()]
[(0, 5, 2, 2)]
>>> resumed = StepPlan(max_steps=10, eval_interval=4, checkpoint_every=2, batches=3)
>>> [(f.start_batch, f.initial_epoch, f.epochs, f.steps_per_epoch) for f in resumed.fits()]
[(3, 1, 2, 1), (4, 2, 5, 2)]
>>> plan.validation_steps()
[4, 8, 10]
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Fit:
    """The arguments of one `model.fit` call (besides data and callbacks).

    Attributes:
        start_batch: data position (batches already consumed) the training stream starts at.
        initial_epoch: first Keras epoch index.
        epochs: Keras epoch index to stop before (as `fit`'s `epochs`).
        steps_per_epoch: batches per epoch.
        validation_freq: validate after epochs whose `index + 1` is a multiple of this.
    """

    start_batch: int
    initial_epoch: int
    epochs: int
    steps_per_epoch: int
    validation_freq: int

    def kwargs(self):
        """`fit` keyword arguments (without `x`, `validation_data` and `callbacks`)."""
        return {
            "initial_epoch": self.initial_epoch,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "validation_freq": self.validation_freq,
        }


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Maps a run's step settings and resume position onto `fit` calls.

    Args:
        max_steps: optimizer steps of the whole run.
        eval_interval: steps between validations.
        checkpoint_every: steps between checkpoints; 0 means `eval_interval`.
        accum: batches per optimizer step (gradient accumulation).
        batches: batches already consumed (a resumed run's data position).
        steps_per_execution: batches per compiled call, at most (see `execution`).

    Raises:
        ValueError: a setting out of range, or `steps_per_execution > 1` with `accum > 1`.
    """

    max_steps: int
    eval_interval: int
    checkpoint_every: int = 0
    accum: int = 1
    batches: int = 0
    steps_per_execution: int = 1

    def __post_init__(self):
        for name in ("max_steps", "eval_interval", "accum", "steps_per_execution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive integer")
        if self.checkpoint_every < 0 or self.batches < 0:
            raise ValueError("checkpoint_every and batches must be >= 0")
        if self.steps_per_execution > 1 and self.accum > 1:
            raise ValueError(f"train.steps_per_execution = {self.steps_per_execution}: use 1 with "
                             "train.grad_accum_steps > 1")

    @property
    def every(self):
        """Steps between checkpoints."""
        return self.checkpoint_every or self.eval_interval

    @property
    def chunk(self):
        """Optimizer steps per Keras epoch."""
        return math.gcd(self.eval_interval, self.every)

    @property
    def execution(self):
        """Batches per compiled call: `steps_per_execution` lowered to divide the epoch length,
        `max_steps` and the resume position (Keras runs whole calls only).

        >>> StepPlan(2000, 250, steps_per_execution=10).execution
        10
        >>> StepPlan(2000, 250, steps_per_execution=10, batches=1005).execution  # a resume at 1005
        5
        """
        return math.gcd(self.steps_per_execution, self.chunk * self.accum, self.max_steps * self.accum, self.batches)

    @property
    def step(self):
        """Optimizer steps already taken."""
        return self.batches // self.accum

    @property
    def done(self):
        return self.step >= self.max_steps

    def fits(self):
        """The `Fit`s that take the run from `batches` to `max_steps` (none when done).

        The last epoch may be cut short: training stops at `max_steps` (`RunState` does that),
        which need not be a multiple of `chunk`.
        """
        if self.done:
            return []
        epoch_batches = self.chunk * self.accum
        epoch, partial = divmod(self.batches, epoch_batches)
        last_epoch = math.ceil(self.max_steps / self.chunk)
        freq = self.eval_interval // self.chunk
        fits = []
        if partial:  # finish the epoch the checkpoint was taken in
            fits.append(Fit(self.batches, epoch, epoch + 1, epoch_batches - partial, freq))
            epoch += 1
        if epoch < last_epoch:
            fits.append(Fit(epoch * epoch_batches, epoch, last_epoch, epoch_batches, freq))
        return fits

    def validation_steps(self):
        """Optimizer steps after which the fits validate (the last step always ends with a
        validation: `pretrain` evaluates there when no epoch did)."""
        steps = list(range(self.eval_interval, self.max_steps + 1, self.eval_interval))
        steps = [s for s in steps if s > self.step]
        if self.max_steps > self.step and (not steps or steps[-1] != self.max_steps):
            steps.append(self.max_steps)
        return steps

    def checkpoint_steps(self):
        """Optimizer steps after which a checkpoint is written (and at the end of the run)."""
        steps = [s for s in range(self.every, self.max_steps + 1, self.every) if s > self.step]
        if self.max_steps > self.step and (not steps or steps[-1] != self.max_steps):
            steps.append(self.max_steps)
        return steps
