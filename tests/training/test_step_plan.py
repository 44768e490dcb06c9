"""StepPlan: every combination of max_steps / eval_interval / checkpoint_every / accumulation /
resume position gives the epoch ends, validations and checkpoints of an uninterrupted run."""

import itertools
import math

import pytest

from kerasllm.training.step_plan import StepPlan


def simulate(plan):
    """Runs `plan` the way Keras' fit and the run's callbacks do; returns the optimizer steps at
    which (validation, checkpoint) happen and the data positions each fit starts at."""
    batches, validations, checkpoints = plan.batches, [], []
    for fit in plan.fits():
        assert fit.start_batch == batches, "each fit starts where the data stream stands"
        for epoch in range(fit.initial_epoch, fit.epochs):
            for _ in range(fit.steps_per_epoch):
                batches += 1
                if batches >= plan.max_steps * plan.accum:  # RunState stops the run here
                    break
            step = batches // plan.accum
            if (epoch + 1) % fit.validation_freq == 0:
                validations.append(step)
            if batches % (plan.every * plan.accum) == 0:  # Checkpointer.on_epoch_end
                checkpoints.append(step)
            if batches >= plan.max_steps * plan.accum:
                return validations, checkpoints, batches
    return validations, checkpoints, batches


GRID = list(itertools.product([1, 7, 12, 20], [1, 3, 4, 5], [0, 1, 2, 6], [1, 2, 3]))


@pytest.mark.parametrize("max_steps, eval_interval, checkpoint_every, accum", GRID)
def test_uninterrupted_run_validates_and_checkpoints_on_schedule(max_steps, eval_interval, checkpoint_every, accum):
    plan = StepPlan(max_steps, eval_interval, checkpoint_every, accum)
    validations, checkpoints, batches = simulate(plan)
    every = checkpoint_every or eval_interval
    assert batches == max_steps * accum
    multiples = list(range(eval_interval, max_steps + 1, eval_interval))
    # A last epoch cut short at max_steps may validate too (pretrain ends with a validation anyway).
    assert validations in (multiples, multiples + [max_steps])
    assert checkpoints == [s for s in range(every, max_steps + 1, every)]
    assert set(plan.validation_steps()) >= set(validations)


@pytest.mark.parametrize("max_steps, eval_interval, checkpoint_every, accum", GRID)
def test_resume_from_any_position_continues_the_same_schedule(max_steps, eval_interval, checkpoint_every, accum):
    full_validations, full_checkpoints, _ = simulate(StepPlan(max_steps, eval_interval, checkpoint_every, accum))
    for position in range(0, max_steps * accum):  # inside epochs and inside accumulations too
        plan = StepPlan(max_steps, eval_interval, checkpoint_every, accum, batches=position)
        validations, checkpoints, batches = simulate(plan)
        assert batches == max_steps * accum
        done = position // accum
        # Evaluations already passed when the checkpoint was taken are not repeated.
        assert validations == [s for s in full_validations if s > done]
        assert checkpoints == [s for s in full_checkpoints if s > done]


def test_a_finished_run_plans_nothing_and_settings_may_change_on_resume():
    assert StepPlan(10, 5, batches=10).fits() == []
    assert StepPlan(10, 5, batches=30, accum=3).done
    # Resumed at step 8 of a run now asked to go to 20 with another eval interval.
    validations, _, _ = simulate(StepPlan(20, 6, 0, 1, batches=8))
    assert validations == [12, 18, 20]  # 20: the last epoch, cut short at max_steps


@pytest.mark.parametrize("kwargs", [{"max_steps": 0, "eval_interval": 1}, {"max_steps": 1, "eval_interval": 0},
                                    {"max_steps": 1, "eval_interval": 1, "accum": 0},
                                    {"max_steps": 1, "eval_interval": 1, "checkpoint_every": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        StepPlan(**kwargs)


def simulate_calls(plan):
    """`simulate` for `steps_per_execution > 1`: Keras runs whole calls of `plan.execution`
    batches (an epoch of n batches is ceil(n / k) calls) and the callbacks see the run state
    after each call."""
    k, batches, validations, checkpoints = plan.execution, plan.batches, [], []
    for fit in plan.fits():
        assert fit.start_batch == batches
        for epoch in range(fit.initial_epoch, fit.epochs):
            for _ in range(-(-fit.steps_per_epoch // k)):
                batches += k
                if batches >= plan.max_steps:
                    break
            if (epoch + 1) % fit.validation_freq == 0:
                validations.append(batches)
            if batches % plan.every == 0:
                checkpoints.append(batches)
            if batches >= plan.max_steps:
                return validations, checkpoints, batches
    return validations, checkpoints, batches


@pytest.mark.parametrize("k", [2, 5, 10])
@pytest.mark.parametrize("max_steps, eval_interval, checkpoint_every", [(20, 10, 0), (20, 5, 10), (30, 10, 5), (7, 3, 0),
                                                                        (23, 10, 0), (12, 4, 6)])
def test_steps_per_execution_keeps_the_schedule_of_single_steps(k, max_steps, eval_interval, checkpoint_every):
    single = simulate(StepPlan(max_steps, eval_interval, checkpoint_every))
    for position in range(0, max_steps):  # resumed anywhere, e.g. after a change of settings
        plan = StepPlan(max_steps, eval_interval, checkpoint_every, batches=position, steps_per_execution=k)
        assert k % plan.execution == 0
        validations, checkpoints, batches = simulate_calls(plan)
        assert batches == max_steps
        assert validations == [s for s in single[0] if s > position]
        assert checkpoints == [s for s in single[1] if s > position]
    assert StepPlan(max_steps, eval_interval, checkpoint_every, steps_per_execution=k).execution == \
        math.gcd(k, eval_interval, checkpoint_every or eval_interval, max_steps)


def test_steps_per_execution_refuses_accumulation():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        StepPlan(20, 10, accum=2, steps_per_execution=2)
