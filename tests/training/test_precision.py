"""Precision policies: what `auto` resolves to, dtypes of variables/activations/logits, and that
each policy trains on CPU."""

import keras
import numpy as np
import pytest

from kerasllm.config import Config, ModelConfig
from kerasllm.errors import ConfigError
from kerasllm.models import build_model
from kerasllm.training.precision import precision_scope, resolve_precision
from kerasllm.training.run import compile_model


def test_auto_precision_per_device():
    assert resolve_precision("auto", "default", gpus=0) == "float32"
    assert resolve_precision("auto", "mirrored", gpus=4) == "mixed_float16"
    assert resolve_precision("auto", "tpu", gpus=0) == "mixed_bfloat16"
    assert resolve_precision("mixed_bfloat16", "default", gpus=0) == "mixed_bfloat16"
    with pytest.raises(ConfigError, match="train.precision = 'half'"):
        resolve_precision("half")


def test_precision_scope_restores_the_global_policy():
    before = keras.config.dtype_policy().name
    with precision_scope("mixed_bfloat16") as policy:
        assert policy.compute_dtype == "bfloat16" and policy.variable_dtype == "float32"
    assert keras.config.dtype_policy().name == before


@pytest.mark.slow  # 10-35 s each depending on host load (one traced fit per policy)
@pytest.mark.parametrize(
    "policy, compute", [("float32", "float32"), ("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")]
)
def test_each_policy_trains_with_float32_variables_and_logits(policy, compute):
    config = Config()
    config.model = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8)
    config.train.learning_rate, config.train.warmup_steps, config.train.max_steps = 1e-2, 0, 30
    config.train.jit_compile = False
    with precision_scope(policy):
        keras.utils.set_random_seed(0)
        model = compile_model(build_model(config.model, vocab_size=7), config, policy)
    assert model.dtype_policy.name == policy
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    blocks = [layer for layer in model._flatten_layers() if layer is not model and layer.weights]
    assert blocks and all(layer.compute_dtype in (compute, "float32") for layer in blocks)
    assert any(layer.compute_dtype == compute for layer in blocks)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")

    x = np.tile(np.arange(8, dtype="int32") % 7, (16, 1))  # a cycle: easy to learn
    y = (x + 1) % 7
    logits = model(x[:2])
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    history = model.fit(x, y, batch_size=8, epochs=8, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < 0.7 * history[0]
