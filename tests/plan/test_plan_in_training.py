"""The `[plan]` options the trainer honours: `plan.remat` and, on TensorFlow, `plan.layout`'s
limits. The JAX sharding of `plan.layout` runs on 8 host devices in tests/test_plan_jax.py."""

import functools
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO_ROOT
from kerasllm.config import Config, ModelConfig, TrainConfig
from kerasllm.errors import ConfigError
from kerasllm.layers import DecoderBlock
from kerasllm.models import build_model
from kerasllm.training import pretrain
from kerasllm.training.distribute import Placement, resolve_placement
from kerasllm.training.run import _build

# LLaMA-style, so RoPE positions and the packed-row mask are closed over by the remat'd call.
TINY = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, positions="rope", norm="rmsnorm",
            mlp="swiglu", bias=False, tie_embeddings=False)


@pytest.fixture
def block_calls(monkeypatch):
    """Names of the decoder blocks whose `call` ran (traced), in order."""
    calls = []
    original = DecoderBlock.call

    @functools.wraps(original)  # Keras reads the signature (the `training` argument)
    def call(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DecoderBlock, "call", call)
    return calls


def packed_batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 11, (4, 9)).astype("int32")
    segments = np.repeat([[1, 1, 1, 2, 2, 2, 2, 2]], 4, axis=0)
    return {"token_ids": x[:, :-1], "segment_ids": segments}, x[:, 1:]


def one_sgd_step(remat, jit_compile):
    """`(loss, gradients)` of one SGD step (lr 1) of the tiny GPT, from the same init."""
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(**TINY), vocab_size=11, remat=remat)
    model.compile(optimizer=keras.optimizers.SGD(1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    before = [np.array(w) for w in model.get_weights()]
    loss = model.train_on_batch(*packed_batch())
    return float(loss), [b - a for b, a in zip(before, model.get_weights())]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_remat_gives_the_same_step_and_recomputes_each_block(block_calls, jit_compile):
    loss, grads = one_sgd_step(False, jit_compile)
    plain_calls = list(block_calls)
    block_calls.clear()
    remat_loss, remat_grads = one_sgd_step(True, jit_compile)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    for remat_grad, grad in zip(remat_grads, grads):
        np.testing.assert_allclose(remat_grad, grad, atol=1e-6)
    assert sum(np.abs(g).sum() for g in grads) > 0
    # tf.recompute_grad runs each block's forward again to build the backward pass.
    assert plain_calls == ["block_0", "block_1"]
    assert block_calls == ["block_0", "block_1", "block_1", "block_0"]


def test_remat_model_predicts_and_generates_like_the_plain_one():
    from kerasllm.generation import Generator

    model = build_model(ModelConfig(**TINY), vocab_size=11, remat=True)
    plain = build_model(ModelConfig(**TINY), vocab_size=11)
    plain.set_weights(model.get_weights())
    x = packed_batch()[0]["token_ids"]
    np.testing.assert_allclose(model(x), plain(x), atol=1e-6)
    greedy = [Generator(m, jit_compile=False).generate(x[:, :3], 3, temperature=0) for m in (model, plain)]
    assert (greedy[0] == greedy[1]).all()


def test_remat_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"plan.remat = 'on'.*model.arch = 'lstm'"):
        build_model(ModelConfig(arch="lstm", n_layer=1, n_embd=8, block_size=8), vocab_size=11, remat=True)
    with pytest.raises(ConfigError, match=r"plan.remat = 'on' needs model.dropout = 0"):
        build_model(ModelConfig(**TINY, dropout=0.1), vocab_size=11, remat=True)


def tiny_run_config(text_file, remat="off", layout="auto", **model):
    config = Config()
    config.model = ModelConfig(**{**TINY, **model})
    config.data.dataset = str(text_file)
    config.data.cache = False
    config.train = TrainConfig(batch_size=4, max_steps=2, eval_interval=2, eval_steps=1, warmup_steps=1,
                               jit_compile=False, peak_flops=1e12)
    config.plan.remat = remat
    config.plan.layout = layout
    return config


@pytest.mark.parametrize("remat, recomputed", [("on", True), ("auto", False), ("off", False)])
def test_trainer_builds_with_plan_remat(block_calls, remat, recomputed):
    config = tiny_run_config("unused", remat=remat)
    model = _build(config, Placement("default", 1), "float32", 11, False, seed=0)
    model.train_on_batch(*packed_batch())
    assert len(block_calls) == (4 if recomputed else 2), block_calls


def test_trainer_rejects_remat_it_cannot_apply_before_reading_data(tmp_path):
    config = tiny_run_config(tmp_path / "missing.txt", remat="on", dropout=0.1)
    with pytest.raises(ConfigError, match="model.dropout"):
        pretrain(config, tmp_path / "run", log=lambda *_: None)


@pytest.mark.parametrize("layout", ["fsdp", "tensor", "fsdp+tensor"])
def test_sharded_layouts_need_jax(tmp_path, layout):
    with pytest.raises(ConfigError, match=re.escape(f"plan.layout = '{layout}'") + ".*KERAS_BACKEND=jax"):
        pretrain(tiny_run_config(tmp_path / "missing.txt", layout=layout), tmp_path / "run", log=lambda *_: None)
    with pytest.raises(ConfigError, match="plan.layout = 'zero'"):
        resolve_placement("auto", layout="zero")
    assert resolve_placement("auto", layout="data", log=lambda *_: None).kind == "default"


JAX_SCRIPT = r"""
import jax, keras, numpy as np
assert keras.backend.backend() == "jax"
from kerasllm.config import ModelConfig
from kerasllm.models import build_model

cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, positions="rope", norm="rmsnorm",
                  mlp="swiglu", bias=False, tie_embeddings=False)
x = np.random.default_rng(0).integers(0, 11, (4, 9)).astype("int32")
segments = np.repeat([[1, 1, 1, 2, 2, 2, 2, 2]], 4, axis=0)
results = {}
for remat in (False, True):
    keras.utils.set_random_seed(0)
    model = build_model(cfg, vocab_size=11, remat=remat)
    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]

    def loss(trainable):
        logits, _ = model.stateless_call(trainable, fixed, {"token_ids": x[:, :-1], "segment_ids": segments},
                                         training=True)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(x[:, 1:], logits)

    value, grads = jax.jit(jax.value_and_grad(loss))(trainable)
    # jax.checkpoint is one remat equation per block in the traced gradient (the primitive is
    # named "remat2" in jax 0.10).
    eqns = jax.make_jaxpr(jax.grad(loss))(trainable).jaxpr.eqns
    remats = sum(e.primitive.name.startswith("remat") for e in eqns)
    steps = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        fitted = build_model(cfg, vocab_size=11, remat=remat)
        fitted.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=jit_compile,
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        steps.append(fitted.train_on_batch({"token_ids": x[:, :-1], "segment_ids": segments}, x[:, 1:]))
    results[remat] = value, grads, remats, steps
(value, grads, plain_remats, plain_steps), (remat_value, remat_grads, remats, remat_steps) = (
    results[False], results[True])
np.testing.assert_allclose(remat_value, value, rtol=1e-6)
for a, b in zip(remat_grads, grads):
    np.testing.assert_allclose(a, b, atol=1e-6)
np.testing.assert_allclose(remat_steps + plain_steps, [value] * 4, rtol=1e-5)
assert plain_remats == 0 and remats == cfg.n_layer, (plain_remats, remats)
print("ok")
"""


@pytest.mark.slow
def test_remat_on_jax(tmp_path):
    pytest.importorskip("jax")
    script = tmp_path / "remat_jax.py"
    script.write_text(JAX_SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout[-2000:] + result.stderr[-3000:]
