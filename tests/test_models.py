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
    history = model.fit(x[:, :-1], x[:, 1:], epochs=150, batch_size=4, verbose=0)
    assert history.history["loss"][0] > 2.5
    assert history.history["loss"][-1] < 0.1


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
