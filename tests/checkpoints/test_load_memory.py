"""Loading a checkpoint holds the model plus one block of rows: no random init, no second copy.

numpy's buffers are visible to `tracemalloc`, TensorFlow's are not; the loader reads every
tensor into a numpy buffer that the variable then adopts, so on TensorFlow the traced memory
after the load is the model itself and its peak is the model plus the tensor being read.
"""

import json

import keras
import numpy as np
import pytest

from kerasllm.checkpoints.hf import build_unset_model, load_weights, model_config_from_hf
from kerasllm.checkpoints.safetensors_io import SafetensorsCheckpoint, write_safetensors

# Large enough that one tensor (the 1 MiB embeddings and head) stands out of Python's noise.
V, C, F, LAYERS, H, K = 2048, 128, 352, 2, 4, 2


def llama_checkpoint(folder, dtype="float32"):
    hf = {"model_type": "llama", "vocab_size": V, "hidden_size": C, "intermediate_size": F,
          "num_hidden_layers": LAYERS, "num_attention_heads": H, "num_key_value_heads": K,
          "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(hf))
    rng = np.random.default_rng(0)
    D = C // H
    shapes = {"model.embed_tokens.weight": (V, C), "lm_head.weight": (V, C), "model.norm.weight": (C,)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                       p + "self_attn.q_proj.weight": (H * D, C), p + "self_attn.k_proj.weight": (K * D, C),
                       p + "self_attn.v_proj.weight": (K * D, C), p + "self_attn.o_proj.weight": (C, H * D),
                       p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                       p + "mlp.down_proj.weight": (C, F)})
    tensors = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}
    write_safetensors(tensors, folder / "model.safetensors", dtype)
    return model_config_from_hf(hf), tensors


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow adopts numpy buffers via DLPack")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_holds_the_model_plus_one_block(dtype, tmp_path, monkeypatch):
    import tracemalloc

    from kerasllm.checkpoints import hf

    monkeypatch.setattr(hf, "BLOCK_BYTES", 2**17)  # an eighth of the largest tensor
    config, tensors = llama_checkpoint(tmp_path, dtype)
    checkpoint = SafetensorsCheckpoint(tmp_path)
    model = build_unset_model(config)
    model_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    largest = max(a.nbytes for a in tensors.values())
    del tensors
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        load_weights(model, "llama", checkpoint)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"model {model_bytes}, largest tensor {largest}, peak {peak - before}, after {after - before}")
    # Reading every tensor before assigning any would peak at two models; a transpose, a
    # concatenation or a bfloat16 widening through a whole temporary at the model plus one
    # tensor or more. Blocks of rows keep the transient to about one block (bfloat16: 1.5).
    assert peak - before <= model_bytes + largest / 2
    # The variables own the buffers the tensors were read into: TensorFlow made no copy
    # (a copy would leave almost nothing traced here, and the copy in untraced memory).
    assert after - before >= 0.95 * model_bytes


def test_load_draws_no_random_initialization(tmp_path, monkeypatch):
    from keras.src.initializers import random_initializers

    config, tensors = llama_checkpoint(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a random initialization was drawn while loading a checkpoint")

    for name in ("normal", "truncated_normal", "uniform"):
        monkeypatch.setattr(random_initializers.random, name, refuse)
    model = build_unset_model(config)
    load_weights(model, "llama", SafetensorsCheckpoint(tmp_path))
    weights = {v.path.split("/", 1)[1]: v.numpy() for v in model.weights}
    np.testing.assert_array_equal(weights["token_embedding/embeddings"], tensors["model.embed_tokens.weight"])
    np.testing.assert_array_equal(weights["token_embedding/reverse_embeddings"], tensors["lm_head.weight"].T)
    q, k, v = (tensors[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    np.testing.assert_array_equal(weights["block_1/attn/qkv/kernel"], np.concatenate([q, k, v]).T)


def test_blocks_smaller_than_a_tensor_give_the_same_weights(tmp_path, monkeypatch):
    """Tensors read in many blocks of rows (transposed, fused, bfloat16) equal one whole read."""
    from kerasllm.checkpoints import hf

    config, tensors = llama_checkpoint(tmp_path, "bfloat16")
    checkpoint = SafetensorsCheckpoint(tmp_path)
    whole = build_unset_model(config)
    load_weights(whole, "llama", checkpoint)
    monkeypatch.setattr(hf, "BLOCK_BYTES", 3 * 4 * C + 4)  # 3 rows of a (., C) tensor: ragged last block
    blocks = build_unset_model(config)
    load_weights(blocks, "llama", checkpoint)
    for a, b in zip(whole.weights, blocks.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_allclose(whole.weights[0].numpy(), tensors["model.embed_tokens.weight"], rtol=1e-2)


def test_a_failed_load_leaves_no_variables_waiting(tmp_path):
    """A missing tensor is an error, and the half-built model is not initialized later by Keras."""
    from keras.src.backend.common import global_state

    from kerasllm.errors import DataError

    config, tensors = llama_checkpoint(tmp_path)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    write_safetensors(tensors, tmp_path / "model.safetensors")
    model = build_unset_model(config)
    with pytest.raises(DataError, match="layers.1.mlp.down_proj.weight is missing"):
        load_weights(model, "llama", SafetensorsCheckpoint(tmp_path))
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    assert not {id(v) for v in model.variables} & {id(v) for v in pending}
    with keras.StatelessScope():  # closing one initializes whatever is pending: must not fail
        pass
