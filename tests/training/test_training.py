"""Optimizers, schedules, accumulation, regularization, guards and run logs of `pretrain`."""

import csv
import math

import keras
import numpy as np
import pytest

from kerasllm.config import Config, ModelConfig, TrainConfig
from kerasllm.errors import ConfigError, RunError
from kerasllm.models import build_model
from kerasllm.training import pretrain
from kerasllm.training.callbacks import LOG_COLUMNS
from kerasllm.training.rundir import RunDir
from kerasllm.training.optimizers import apply_regularization, build_optimizer, no_decay_variables
from kerasllm.training.schedules import build_schedule

TINY_MODEL = dict(n_layer=1, n_head=2, n_embd=16, block_size=8)


def tiny_model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return build_model(ModelConfig(**{**TINY_MODEL, **overrides}), vocab_size=11)


def toy_batches(n, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 11, size=(n * batch, 8)).astype("int32")
    return x, np.roll(x, -1, axis=1)


def lr_at(train, step):
    schedule = build_schedule(train)
    return float(schedule(step)) if callable(schedule) else schedule


@pytest.mark.parametrize(
    "kind, checks",
    [
        ("cosine", {0: 0.0, 10: 1e-3, 100: 1e-4, 1000: 1e-4}),
        ("linear", {0: 0.0, 5: 5e-4, 10: 1e-3, 55: 5.5e-4, 100: 1e-4, 1000: 1e-4}),
        ("constant", {5: 5e-4, 10: 1e-3, 100: 1e-3}),
        ("exponential", {10: 1e-3, 110: 5e-4, 210: 2.5e-4, 10_000: 1e-4}),
        ("plateau", {0: 1e-3, 100: 1e-3}),
    ],
)
def test_schedules(kind, checks):
    train = TrainConfig(schedule=kind, learning_rate=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100)
    if kind == "exponential":
        train.lr_decay_steps, train.decay_rate = 100, 0.5
    for step, expected in checks.items():
        assert lr_at(train, step) == pytest.approx(expected, rel=1e-4, abs=1e-9), (kind, step)


def test_schedule_and_optimizer_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.min_lr"):
        build_schedule(TrainConfig(min_lr=1.0, learning_rate=1e-3))
    with pytest.raises(ConfigError, match="train.decay_rate"):
        build_schedule(TrainConfig(schedule="exponential", decay_rate=2.0))
    with pytest.raises(ConfigError, match="train.momentum"):
        build_optimizer(TrainConfig(optimizer="sgd", momentum=1.5), tiny_model())
    with pytest.raises(ConfigError, match="train.grad_accum_steps"):
        build_optimizer(TrainConfig(grad_accum_steps=0), tiny_model())


def test_optimizer_kinds_and_weight_decay_exclusions():
    model = tiny_model()
    sgd = build_optimizer(TrainConfig(optimizer="sgd", momentum=0.8, nesterov=True), model)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.8
    assert isinstance(build_optimizer(TrainConfig(optimizer="adam"), model), keras.optimizers.Adam)
    adamw = build_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.1), model)
    assert isinstance(adamw, keras.optimizers.AdamW)
    excluded = {v.path for v in no_decay_variables(model)}
    assert excluded and all(len(v.shape) < 2 or "embedding" in v.path for v in model.trainable_variables
                            if v.path in excluded)
    kernels = [v for v in model.trainable_variables if v.path not in excluded]
    assert kernels and all(len(v.shape) >= 2 for v in kernels)


def test_grad_norm_is_recorded_and_clipping_applies():
    model = tiny_model()
    optimizer = build_optimizer(TrainConfig(optimizer="sgd", momentum=0.0, grad_clip=0.5, warmup_steps=0,
                                            schedule="constant", learning_rate=1.0), model)
    optimizer.build(model.trainable_variables)
    grads = [np.full(v.shape, 0.1, "float32") for v in model.trainable_variables]
    expected_norm = math.sqrt(sum(0.01 * np.prod(v.shape) for v in model.trainable_variables))
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)
    assert float(optimizer.grad_norm.numpy()) == pytest.approx(expected_norm, rel=1e-5)
    step = math.sqrt(sum(np.sum((v.numpy() - b) ** 2) for v, b in zip(model.trainable_variables, before)))
    assert step == pytest.approx(0.5, rel=1e-4)  # lr 1 x gradient clipped to norm 0.5


@pytest.mark.slow  # ~40 s: two compiled fits, one with Keras' accumulation branches
def test_gradient_accumulation_equals_the_large_batch(optimizer="adamw"):
    # AdamW with warmup, cosine decay, decoupled weight decay and global-norm clipping: every
    # part must see the averaged gradient and count updates, not micro-batches.
    x, y = toy_batches(n=3, batch=8)
    weights = []
    for accum in (1, 4):
        model = tiny_model(seed=1)
        # epsilon 1e-6: with the default 1e-8, a weight whose gradient is ~0 takes a step of
        # lr x sign(rounding noise), and the two summation orders round differently.
        train = TrainConfig(optimizer=optimizer, grad_accum_steps=accum, learning_rate=0.05, warmup_steps=2,
                            max_steps=3, min_lr=0.0, momentum=0.9, grad_clip=0.5, epsilon=1e-6)
        model.compile(optimizer=build_optimizer(train, model), jit_compile=False,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8 // accum, epochs=1, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 3
        weights.append(model.get_weights())
    changed = max(float(np.max(np.abs(a - b))) for a, b in zip(weights[0], tiny_model(seed=1).get_weights()))
    assert changed > 1e-3  # the steps did something
    for large, accumulated in zip(*weights):
        np.testing.assert_allclose(large, accumulated, atol=2e-6)


def test_l1_l2_regularization_adds_to_the_loss():
    model = tiny_model()
    assert apply_regularization(model, 0.0, 0.0) == 0 and not model.losses
    count = apply_regularization(model, l1=1e-3, l2=1e-2)
    kernels = [v for v in model.trainable_variables if len(v.shape) >= 2 and "embedding" not in v.path]
    assert count == len(kernels) > 0
    expected = sum(1e-3 * np.abs(v.numpy()).sum() + 1e-2 * np.square(v.numpy()).sum() for v in kernels)
    model(np.zeros((1, 8), "int32"))
    assert float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses)) == pytest.approx(expected, rel=1e-4)


def tiny_config(text_file, **train):
    config = Config()
    config.model = ModelConfig(**TINY_MODEL)
    config.data.dataset = str(text_file)
    defaults = dict(batch_size=4, max_steps=8, eval_interval=4, eval_steps=2, warmup_steps=1,
                    jit_compile=False, learning_rate=3e-3)
    config.train = TrainConfig(**{**defaults, **train})
    return config


@pytest.fixture
def text_file(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(rng.choice(words, size=6000)) + "\n", encoding="utf-8")
    return path


def test_run_writes_logs_curves_and_checkpoints(tmp_path, text_file):
    config = tiny_config(text_file, checkpoint_every=2, keep_checkpoints=2, optimizer="sgd", momentum=0.9,
                         learning_rate=0.3, schedule="linear", grad_accum_steps=2)
    _, _, metrics = pretrain(config, tmp_path / "run", log=lambda *_: None, verbose=0)
    run = tmp_path / "run"
    assert metrics["steps"] == 8 and math.isfinite(metrics["val_loss"]) and metrics["tokens_per_second"] > 0
    assert metrics["mfu"] is None or 0 < metrics["mfu"] < 1
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert [bool(r["val_loss"]) for r in rows] == [False, True, False, True]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert float(rows[-1]["learning_rate"]) < float(rows[0]["learning_rate"])
    assert all(float(r["grad_norm"]) > 0 for r in rows)
    assert (run / "curves.png").stat().st_size > 5000
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.keras"))
    assert checkpoints == ["ckpt-0000006.keras", "ckpt-0000008.keras"]
    assert (run / "checkpoints" / "best.keras").is_file()
    _, info = RunDir(run).latest_checkpoint()
    assert info["step"] == 8 and info["batches"] == 16  # two micro-batches per step

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def tags(folder):
        events = EventAccumulator(str(run / "logs" / folder))
        events.Reload()
        return set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])

    expected = {"epoch_loss", "epoch_learning_rate", "epoch_grad_norm", "epoch_tokens_per_second",
                "epoch_perplexity"}
    assert expected <= tags("train"), tags("train")
    assert {"epoch_loss", "epoch_perplexity"} <= tags("validation")  # val_loss, val_perplexity


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, text_file):
    # SGD with a rate of 1e30: the first update blows the weights up, the next loss is not finite.
    config = tiny_config(text_file, checkpoint_every=1, optimizer="sgd", momentum=0.0, grad_clip=0.0,
                         schedule="constant", warmup_steps=0, learning_rate=1e30, min_lr=0.0, max_steps=20)
    with pytest.raises(RunError, match=r"loss became (nan|inf|-inf) at step \d+") as error:
        pretrain(config, tmp_path / "run", log=lambda *_: None, verbose=0)
    path, info = RunDir(tmp_path / "run").latest_checkpoint()
    assert path is not None and str(path) in str(error.value)
    assert math.isfinite(info["loss"])
    bad_step = int(str(error.value).split("at step ")[1].split(";")[0])
    assert info["step"] == bad_step - 1 and bad_step < 20


def test_plateau_cuts_the_rate_and_early_stopping_stops(tmp_path, text_file):
    # A rate of 1e-9 cannot improve val loss, so both patiences run out.
    config = tiny_config(text_file, schedule="plateau", learning_rate=1e-9, min_lr=0.0, plateau_patience=1,
                         plateau_factor=0.5, early_stop_patience=3, eval_interval=1, max_steps=30)
    lines = []
    _, _, metrics = pretrain(config, tmp_path / "run", log=lines.append, verbose=0)
    assert metrics["early_stopped_at"] is not None and metrics["steps"] < 30
    assert any(line.strip().startswith("plateau:") for line in lines)
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rates = [float(r["learning_rate"]) for r in csv.DictReader(f)]
    assert min(rates) < 1e-9 * 0.6


def test_bad_training_options_are_config_errors(tmp_path, text_file):
    with pytest.raises(ConfigError, match="train.grad_accum_steps"):
        pretrain(tiny_config(text_file, grad_accum_steps=3), tmp_path / "a", log=lambda *_: None)
    with pytest.raises(ConfigError, match="train.model_parallel"):
        pretrain(tiny_config(text_file, model_parallel=2), tmp_path / "b", log=lambda *_: None)
