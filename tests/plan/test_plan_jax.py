"""The plan's sharding on 8 host CPU devices (JAX backend): planned layouts, parity, a train step,
and `pretrain` under `plan.layout = "fsdp"`."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = r"""
import sys
from pathlib import Path
import jax, keras, numpy as np
assert keras.backend.backend() == "jax" and len(jax.devices()) == 8, jax.devices()
from kerasllm.models import build_model
from kerasllm.models.presets import get_preset
from kerasllm.plan import count_params, flops_per_token
from kerasllm.plan.planner import plan
from kerasllm.plan.sharding import make_distribution, weight_layouts

cfg = get_preset("llama-7b-tiny")
rng = np.random.default_rng(0)
x = rng.integers(0, cfg.vocab_size, (16, 33)).astype("int32")
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

def run(distribution, weights=None):
    with distribution.scope():
        model = build_model(cfg)
        if weights is not None:
            model.set_weights(weights)
        initial = model.get_weights()
        model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss=loss)
        logits = np.asarray(model.predict(x[:, :-1], batch_size=16, verbose=0))
        history = model.fit(x[:, :-1], x[:, 1:], batch_size=16, epochs=1, verbose=0).history["loss"]
    return model, initial, logits, history[0]

reference, ref_weights, ref_logits, ref_loss = run(keras.distribution.DataParallel())
ref_updated = [np.asarray(w) for w in reference.get_weights()]

auto = plan(cfg, devices="8xH100")["recommendation"]
assert auto["strategy"] == "data", auto  # a tiny model is replicated
checked = 0
for strategy in ("fsdp", "tensor", "fsdp+tensor"):
    rec = plan(cfg, devices="8xH100", strategy=strategy)["recommendation"]
    assert rec["fits"], rec
    tp, dp = rec["tensor_parallel"], rec["data_parallel"]
    model, _, logits, first_loss = run(make_distribution(cfg, rec["strategy"], tp), ref_weights)
    planned = weight_layouts(cfg, (dp, tp), fsdp=rec["fsdp"])
    sizes = {"batch": dp, "model": tp, None: 1}
    for v in model.weights:
        axes = planned[v.path.split("/", 1)[1]]
        spec = tuple(v.value.sharding.spec) + (None,) * (len(v.shape) - len(v.value.sharding.spec))
        assert spec == axes, (strategy, v.path, spec, axes)
        local = v.value.addressable_shards[0].data.shape
        assert local == tuple(n // sizes[a] for n, a in zip(v.shape, axes)), (v.path, local)
        checked += any(a is not None for a in axes)
    np.testing.assert_allclose(logits, ref_logits, atol=2e-5)
    np.testing.assert_allclose(first_loss, ref_loss, rtol=1e-5)
    for new, old in zip(model.get_weights(), ref_updated):
        np.testing.assert_allclose(new, old, atol=2e-5)
    print(strategy, "mesh", (dp, tp), "ok")
assert checked >= 3 * 10, checked

# The FLOPs formula against XLA's own count of a forward pass (a wider model, so norms,
# softmax and RoPE are small next to the matmuls).
from kerasllm.config import ModelConfig
wide = ModelConfig(n_layer=2, n_head=4, n_embd=256, positions="rope", norm="rmsnorm", mlp="swiglu",
                   bias=False, tie_embeddings=False, block_size=128, vocab_size=512)
model = build_model(wide)
tokens = np.zeros((1, 128), "int32")
def forward(trainable, tokens):
    return model.stateless_call(trainable, [], tokens)[0]
cost = jax.jit(forward).lower([v.value for v in model.trainable_variables], tokens).compile().cost_analysis()
cost = cost[0] if isinstance(cost, list) else cost
xla = cost["flops"] / 128
formula = flops_per_token(wide, training=False)
print("forward FLOPs/token: xla", xla, "formula", formula, "ratio", xla / formula)
assert 0.9 < xla / formula < 1.1, (xla, formula)

from kerasllm.config import Config
from kerasllm.errors import ConfigError
from kerasllm.training import pretrain
from kerasllm.training.distribute import resolve_placement

# plan.layout picks the trainer's distribution; contradictions with train.model_parallel are errors.
for layout, mp in (("data", 2), ("fsdp", 2), ("tensor", 1), ("fsdp+tensor", 1)):
    try:
        resolve_placement("auto", cfg, mp, layout=layout)
    except ConfigError as error:
        assert f"plan.layout = {layout!r}" in str(error), error
    else:
        raise AssertionError(f"plan.layout = {layout!r} with train.model_parallel = {mp} was accepted")
assert resolve_placement("auto", cfg, 2, layout="tensor").kind == "tensor (4 data x 2 model)"

# Two FSDP steps of pretrain (with remat): weights split over "batch", each batch too.
run_dir = Path(sys.argv[1])
corpus = run_dir / "corpus.txt"
corpus.write_text(" ".join(rng.choice(["one", "two", "three", "four", "five"], size=3000)) + "\n")
config = Config.from_dict({
    "data": {"dataset": str(corpus), "cache": False},
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
    "train": {"batch_size": 8, "max_steps": 2, "eval_interval": 2, "eval_steps": 1, "warmup_steps": 1,
              "peak_flops": 1e12},
    "plan": {"layout": "fsdp", "remat": "on"},
})
seen = []
class SeeDistribution(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        seen.append(keras.distribution.distribution())
model, _, metrics = pretrain(config, run_dir / "run", log=lambda *_: None, verbose=0,
                             callbacks=[SeeDistribution()])
assert metrics["strategy"] == "fsdp (8 data x 1 model)" and metrics["replicas"] == 8, metrics
assert np.isfinite(metrics["val_loss"]) and len(seen) == 2
assert all(isinstance(d, keras.distribution.ModelParallel) and d.device_mesh.shape == (8, 1) for d in seen), seen
kernel = next(v for v in model.weights if v.path.endswith("block_0/mlp/fc/kernel"))
assert tuple(kernel.value.sharding.spec)[:1] == ("batch",), kernel.value.sharding
assert kernel.value.addressable_shards[0].data.shape == (16 // 8, 64)
print("pretrain fsdp ok")
print("ok")
"""


@pytest.mark.slow
def test_planned_sharding_on_8_host_devices(tmp_path):
    pytest.importorskip("jax")
    script = tmp_path / "plan_jax.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            env=env, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
