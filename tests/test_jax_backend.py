"""The model code is backend-agnostic: the same GPT/LSTM and generator run on JAX."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = r"""
import numpy as np, keras
assert keras.backend.backend() == "jax"
from kerasllm.config import ModelConfig
from kerasllm.models import build_model
from kerasllm.generation import Generator
for cfg in [ModelConfig(n_layer=1, n_embd=16, n_head=2, block_size=16),
            ModelConfig(n_layer=1, n_embd=16, n_head=4, n_kv_head=2, positions="rope", norm="rmsnorm",
                        mlp="swiglu", bias=False, tie_embeddings=False, block_size=16),
            ModelConfig(arch="lstm", n_layer=1, n_embd=8, block_size=16)]:
    model = build_model(cfg, vocab_size=20)
    x = np.random.default_rng(0).integers(0, 20, (2, 16)).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    history = model.fit(x[:, :-1], x[:, 1:], epochs=60, verbose=0).history["loss"]
    assert history[-1] < 0.9 * history[0], history
    generator = Generator(model)
    cached = generator.generate(x[:, :4], 8, temperature=0)
    assert (cached == generator.generate(x[:, :4], 8, temperature=0, use_cache=False)).all()
    a, b, c = (generator.generate(x[:, :4], 8, temperature=5.0, seed=s) for s in (1, 1, 2))
    assert (a == b).all() and not (a == c).all()
print("ok")
"""


@pytest.mark.slow
def test_models_train_and_generate_on_jax(tmp_path):
    pytest.importorskip("jax")
    script = tmp_path / "jax_check.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
