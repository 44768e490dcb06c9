import keras
import numpy as np
import pytest

from kerasllm.config import ModelConfig
from kerasllm.models import GPT, LSTMLanguageModel, build_model

VOCAB = 23

CONFIGS = {
    "gpt2": ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=12),
    "llama": ModelConfig(
        n_layer=2, n_head=4, n_kv_head=2, n_embd=16, block_size=12, positions="rope",
        norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
    ),
    "lstm": ModelConfig(arch="lstm", n_layer=2, n_embd=16, hidden_size=24, block_size=12),
}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_gpt_is_causal(name):
    model = build_model(CONFIGS[name], vocab_size=VOCAB)
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (2, 12)).astype("int32")
    base = np.asarray(model(x))
    for t in [0, 5, 10]:
        changed = x.copy()
        changed[:, t + 1 :] = rng.integers(0, VOCAB, changed[:, t + 1 :].shape)
        out = np.asarray(model(changed))
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
        if t + 1 < 12:
            assert np.abs(out[:, t + 1 :] - base[:, t + 1 :]).max() > 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_keras_save_load_gives_identical_logits(name, tmp_path):
    model = build_model(CONFIGS[name], vocab_size=VOCAB)
    x = np.random.default_rng(1).integers(0, VOCAB, (3, 12)).astype("int32")
    path = tmp_path / "model.keras"
    model.save(path)
    again = keras.models.load_model(path, safe_mode=True)
    assert type(again) is type(model)
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))
    assert again.get_config() == model.get_config()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_overfits_one_batch(name):
    keras.utils.set_random_seed(0)
    model = build_model(CONFIGS[name], vocab_size=VOCAB)
    x = np.random.default_rng(2).integers(0, VOCAB, (4, 13)).astype("int32")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # 150 steps on the same batch, as one epoch: 150 one-step epochs cost 3x more in fit's
    # per-epoch work than in the steps.
    steps = 150
    first = model.evaluate(x[:, :-1], x[:, 1:], batch_size=4, verbose=0)
    history = model.fit(np.tile(x[:, :-1], (steps, 1)), np.tile(x[:, 1:], (steps, 1)), batch_size=4, shuffle=False,
                        epochs=1, verbose=0)
    assert first > 2.5
    assert model.evaluate(x[:, :-1], x[:, 1:], batch_size=4, verbose=0) < 0.1, history.history["loss"]


def test_weight_tying_shares_the_matrix():
    tied = build_model(CONFIGS["gpt2"], vocab_size=VOCAB)
    untied = build_model(ModelConfig(**{**CONFIGS["gpt2"].__dict__, "tie_embeddings": False}), vocab_size=VOCAB)
    assert untied.count_params() - tied.count_params() == VOCAB * 16


def test_gpt2_init_scales_residual_projections():
    model = GPT(vocab_size=100, block_size=8, n_layer=8, n_head=4, n_embd=256)
    model.build((None, 8))
    proj = np.asarray(model.blocks[0].attn.proj.kernel)
    qkv = np.asarray(model.blocks[0].attn.qkv.kernel)
    assert abs(qkv.std() - 0.02) < 0.002
    assert abs(proj.std() - 0.02 / 4) < 0.001
    # every layer draws its own weights
    assert not np.allclose(model.blocks[0].attn.qkv.kernel, model.blocks[1].attn.qkv.kernel)


def test_lstm_state_continues_the_sequence():
    model = build_model(CONFIGS["lstm"], vocab_size=VOCAB)
    assert isinstance(model, LSTMLanguageModel)
    x = np.random.default_rng(3).integers(0, VOCAB, (2, 12)).astype("int32")
    full = np.asarray(model(x))
    first, state = model.call_with_state(x[:, :7], model.init_state(2))
    second, _ = model.call_with_state(x[:, 7:], state)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, atol=1e-5)


def test_attention_matches_plain_softmax_reference():
    from kerasllm.layers import CausalSelfAttention

    layer = CausalSelfAttention(n_head=4, n_kv_head=2)
    x = np.random.default_rng(4).normal(size=(2, 7, 16)).astype("float32")
    out = np.asarray(layer(x))
    qkv = np.asarray(layer.qkv(x))
    H, K, D = 4, 2, 4
    q = qkv[..., : H * D].reshape(2, 7, H, D)
    k = np.repeat(qkv[..., H * D : (H + K) * D].reshape(2, 7, K, D), H // K, axis=2)
    v = np.repeat(qkv[..., (H + K) * D :].reshape(2, 7, K, D), H // K, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D)
    scores = np.where(np.tril(np.ones((7, 7), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    y = np.einsum("bhts,bshd->bthd", probs, v).reshape(2, 7, H * D)
    np.testing.assert_allclose(out, np.asarray(layer.proj(y)), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_every_option_combination(positions, norm, mlp):
    """All option combinations build, stay causal, match the KV cache and reload from .keras."""
    for n_kv_head, bias, tie, dropout in [(0, True, True, 0.0), (1, False, False, 0.1)]:
        config = ModelConfig(
            n_layer=1, n_head=2, n_kv_head=n_kv_head, n_embd=8, block_size=6, positions=positions,
            norm=norm, mlp=mlp, bias=bias, tie_embeddings=tie, dropout=dropout,
        )
        model = build_model(config, vocab_size=11)
        x = np.random.default_rng(5).integers(0, 11, (2, 6)).astype("int32")
        full = np.asarray(model(x))
        cache = model.init_cache(2, 6)
        first, cache = model.call_with_cache(x[:, :4], cache, 0)
        last, _ = model.call_with_cache(x[:, 4:5], cache, 4)
        np.testing.assert_allclose(np.asarray(first), full[:, :4], atol=1e-5)
        np.testing.assert_allclose(np.asarray(last)[:, 0], full[:, 4], atol=1e-5)
        changed = x.copy()
        changed[:, 3:] = (changed[:, 3:] + 1) % 11
        np.testing.assert_allclose(np.asarray(model(changed))[:, :3], full[:, :3], atol=1e-5)
        config_round_trip = type(model).from_config(model.get_config())
        assert config_round_trip.get_config() == model.get_config()
        if dropout:
            assert not np.allclose(np.asarray(model(x, training=True)), full)


# --- options of published checkpoints (issue 17) ---------------------------------------------
REFERENCE = dict(
    gpt2=ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=6),
    llama=ModelConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=8, block_size=6, positions="rope",
                      norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, mlp_hidden=12),
)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_defaults_of_the_checkpoint_options_keep_the_logits_bit_identical(name):
    # tests/models/gpt_reference.npz: weights and logits saved by the GPT before these options.
    import pathlib

    saved = np.load(pathlib.Path(__file__).parent / "gpt_reference.npz")
    model = build_model(REFERENCE[name], vocab_size=11)
    keys = sorted((k for k in saved.files if k.startswith(f"{name}/w")), key=lambda k: int(k.split("/")[1][1:]))
    assert [k.split("/", 3)[3] for k in keys] == [w.path.split("/", 1)[1] for w in model.weights]
    for key, weight in zip(keys, model.weights):
        weight.assign(saved[key])
    logits = np.asarray(model(saved["tokens"]))
    if name == "gpt2":
        # Exact GELU is now computed through erf rather than TensorFlow's erfc form (faster under
        # XLA): the same function, rounded differently, so within float32 rounding, not bit for bit.
        np.testing.assert_allclose(logits, saved[f"{name}/logits"], rtol=0, atol=1e-6)
    else:
        np.testing.assert_array_equal(logits, saved[f"{name}/logits"])


QWEN3_LIKE = ModelConfig(
    n_layer=2, n_head=4, n_kv_head=2, n_embd=16, head_dim=6, block_size=12, positions="rope",
    norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=True, qk_norm=True, tie_embeddings=False,
    rope_scaling="llama3", rope_factor=8.0, rope_original_context=8, mlp_activation="silu",
)


def test_checkpoint_options_round_trip_through_keras_save(tmp_path):
    model = build_model(QWEN3_LIKE, vocab_size=VOCAB)
    assert model.get_layer("block_0").attn.qkv.kernel.shape == (16, (4 + 2 * 2) * 6)
    assert model.get_layer("block_0").attn.qkv.bias is not None
    assert model.get_layer("block_0").attn.proj.bias is None
    x = np.random.default_rng(1).integers(0, VOCAB, (2, 12)).astype("int32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert GPT.from_config(model.get_config()).get_config() == model.get_config()


def test_checkpoint_options_cached_decoding_matches_the_full_pass():
    model = build_model(QWEN3_LIKE, vocab_size=VOCAB)
    x = np.random.default_rng(2).integers(0, VOCAB, (2, 10)).astype("int32")
    full = np.asarray(model(x))
    cache = model.init_cache(2, 12)
    logits, cache = model.call_with_cache(x[:, :6], cache, 0)
    steps = [np.asarray(logits)]
    for t in range(6, 10):
        logits, cache = model.call_with_cache(x[:, t : t + 1], cache, t)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_llama3_rope_scaling_matches_keras_hub():
    from keras_hub.src.models.llama.llama_rotary_embedding import LlamaRotaryEmbedding

    from kerasllm.layers.rotary import make_rotary

    x = np.random.default_rng(3).normal(size=(1, 40, 2, 16)).astype("float32")
    ours = make_rotary(500000.0, {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_context": 32})
    theirs = LlamaRotaryEmbedding(max_wavelength=500000.0, frequency_adjustment_factor=8.0, low_freq_factor=1.0,
                                  high_freq_factor=4.0, pretraining_sequence_length=32)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), atol=1e-5)
    plain = make_rotary(500000.0)
    assert np.abs(np.asarray(plain(x)) - np.asarray(ours(x))).max() > 1e-2


def test_gelu_tanh_is_the_approximation_and_differs_from_exact_gelu():
    from kerasllm.layers import MLP

    x = np.random.default_rng(4).normal(size=(1, 3, 8)).astype("float32") * 10
    exact, tanh = MLP(16, activation="gelu"), MLP(16, activation="gelu_tanh")
    exact.build(x.shape)
    tanh.build(x.shape)
    for a, b in zip(exact.weights, tanh.weights):
        b.assign(a)
    h = np.asarray(exact.fc(x))
    expected = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    np.testing.assert_allclose(np.asarray(tanh(x)), np.asarray(tanh.proj(expected)), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(tanh(x)) - np.asarray(exact(x))).max() > 1e-4
