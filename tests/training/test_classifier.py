"""SequenceClassifier on GPT / LSTM backbones and LoRA adapters."""

import keras
import numpy as np
import pytest

from kerasllm.errors import ConfigError
from kerasllm.models import GPT, LSTMLanguageModel
from kerasllm.models.classifier import SequenceClassifier, truncate_backbone
from kerasllm.models.lora import apply_lora, dense_layers, merge_lora

IDS = np.array([[5, 6, 7, 8, 0, 0], [9, 4, 0, 0, 0, 0], [3, 4, 5, 6, 7, 8]], dtype="int32")
LABELS = np.array([0, 1, 1], dtype="int32")


def _gpt(n_layer=3):
    keras.utils.set_random_seed(0)
    model = GPT(vocab_size=12, block_size=8, n_layer=n_layer, n_head=2, n_embd=16)
    model.build((None, 8))
    return model


def _lstm(n_layer=2):
    keras.utils.set_random_seed(0)
    model = LSTMLanguageModel(vocab_size=12, block_size=8, n_layer=n_layer, n_embd=16)
    model.build((None, 8))
    return model


def _fit(model, steps=3, lr=1e-2):
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(IDS, LABELS, epochs=steps, batch_size=3, verbose=0)


def _values(variables):
    return [np.array(v) for v in variables]


@pytest.mark.parametrize("make", [_gpt, _lstm])
def test_dropped_blocks_are_gone_and_kept_ones_are_copied(make):
    lm = make()
    smaller = truncate_backbone(lm, 1)
    assert smaller.n_layer == lm.n_layer - 1
    assert smaller.count_params() < lm.count_params()
    if isinstance(lm, GPT):
        assert len(smaller.blocks) == lm.n_layer - 1
        kept = zip(smaller.blocks, lm.blocks)
        np.testing.assert_array_equal(smaller.final_norm.get_weights()[0], lm.final_norm.get_weights()[0])
    else:
        assert len(smaller.lstms) == lm.n_layer - 1
        kept = zip(smaller.lstms, lm.lstms)
    for new, old in kept:
        for a, b in zip(new.get_weights(), old.get_weights()):
            np.testing.assert_array_equal(a, b)
    model = SequenceClassifier(smaller, num_classes=2)
    model.build((None, None))
    names = {v.path.split("/")[1] for v in model.weights if v.path.startswith(("gpt", "lstm"))}
    assert f"block_{lm.n_layer - 1}" not in names and f"lstm_{lm.n_layer - 1}" not in names
    with pytest.raises(ConfigError, match="drop_blocks"):
        truncate_backbone(lm, lm.n_layer)


@pytest.mark.parametrize("make", [_gpt, _lstm])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_does_not_change_the_prediction(make, pooling):
    model = SequenceClassifier(make(), num_classes=3, pooling=pooling, add_dense=1)
    short = model(IDS[:, :4])  # rows 0 and 1 fit in 4 tokens ...
    padded = model(np.pad(IDS, ((0, 0), (0, 2))))  # ... and more padding changes nothing
    np.testing.assert_allclose(np.array(short)[:2], np.array(padded)[:2], atol=1e-5)


def test_pooling_picks_the_last_real_token_or_the_masked_mean():
    model = SequenceClassifier(_gpt(), num_classes=2)
    hidden = np.array(model.features(IDS))
    last = np.array(model.pool(hidden, IDS))
    np.testing.assert_allclose(last, hidden[[0, 1, 2], [3, 1, 5]], atol=1e-6)
    model.pooling = "mean"
    mean = np.array(model.pool(hidden, IDS))
    np.testing.assert_allclose(mean[1], hidden[1, :2].mean(axis=0), atol=1e-6)


def test_frozen_blocks_do_not_change_and_the_rest_trains():
    model = SequenceClassifier(_gpt(), num_classes=2)
    model.build((None, None))
    model.freeze_blocks(2)
    backbone = model.backbone
    frozen = [backbone.token_embedding, backbone.position_embedding, *backbone.blocks[:2]]
    free = [backbone.blocks[2], backbone.final_norm, model.classifier_head]
    before_frozen = _values([v for layer in frozen for v in layer.weights])
    before_free = _values([v for layer in free for v in layer.weights])
    _fit(model)
    after_frozen = _values([v for layer in frozen for v in layer.weights])
    after_free = _values([v for layer in free for v in layer.weights])
    for a, b in zip(before_frozen, after_frozen):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, b) for a, b in zip(before_free, after_free) if a.ndim == 2)
    with pytest.raises(ConfigError, match="freeze_blocks"):
        model.freeze_blocks(7)


def test_classifier_round_trips_through_keras_file(tmp_path):
    model = SequenceClassifier(truncate_backbone(_gpt(), 1), num_classes=3, add_dense=2, labels=["neg", "neu", "pos"])
    model.build((None, None))
    path = tmp_path / "clf.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, SequenceClassifier) and loaded.labels == ["neg", "neu", "pos"]
    assert len(loaded.backbone.blocks) == 2
    np.testing.assert_allclose(np.array(loaded(IDS)), np.array(model(IDS)), atol=1e-6)


def test_classifier_rejects_bad_settings():
    with pytest.raises(ConfigError, match="pooling"):
        SequenceClassifier(_gpt(), num_classes=2, pooling="max")
    with pytest.raises(ConfigError, match="at least 2 classes"):
        SequenceClassifier(_gpt(), num_classes=1)


# --- LoRA --------------------------------------------------------------------------------------
def _lora_classifier(alpha=0.0):
    model = SequenceClassifier(_gpt(2), num_classes=2)
    model.build((None, None))
    chosen = apply_lora(model, rank=2, alpha=alpha, targets="*/attn/qkv,*/mlp/fc", trainable=[model.classifier_head])
    return model, chosen


def test_lora_trains_only_adapters_and_head():
    model, chosen = _lora_classifier()
    assert sorted(chosen) == sorted(p for p in dense_layers(model) if p.endswith(("attn/qkv", "mlp/fc")))
    trainable = {v.path for v in model.trainable_weights}
    assert all("lora_kernel" in p or "classifier_head" in p for p in trainable)
    assert sum("lora_kernel" in p for p in trainable) == 2 * len(chosen)
    adapters = {v.path for v in model.trainable_weights if "lora_kernel" in v.path}
    before = {v.path: np.array(v) for v in model.weights}
    _fit(model)
    for v in model.weights:
        changed = not np.array_equal(before[v.path], np.array(v))
        if v.path in adapters and v.path.endswith("lora_kernel_b"):
            assert changed, v.path  # B starts at zero and must move
        elif "classifier_head" not in v.path and "lora_kernel" not in v.path:
            assert not changed, v.path  # every pretrained weight stays as it was


def test_lora_starts_as_the_identity_and_merged_model_matches():
    base = SequenceClassifier(_gpt(2), num_classes=2)
    base.build((None, None))
    reference = np.array(base(IDS))
    apply_lora(base, rank=2, targets="*/attn/*", trainable=[base.classifier_head])
    np.testing.assert_allclose(np.array(base(IDS)), reference, atol=1e-6)  # B = 0: nothing changed yet
    _fit(base, steps=4, lr=5e-2)
    adapted = np.array(base(IDS))
    assert not np.allclose(adapted, reference, atol=1e-4)
    merged = merge_lora(base)
    assert not any(layer.lora_enabled for layer in dense_layers(merged).values())
    assert merged.count_params() < base.count_params()
    np.testing.assert_allclose(np.array(merged(IDS)), adapted, atol=1e-5)


def test_lora_alpha_scales_the_update():
    outputs = []
    for alpha in (2.0, 4.0):
        model, _ = _lora_classifier(alpha=alpha)
        for layer in dense_layers(model).values():
            if layer.lora_enabled:
                layer.lora_kernel_b.assign(np.full(layer.lora_kernel_b.shape, 0.01, "float32"))
                delta = np.array(layer.kernel) - np.array(layer._kernel)
                np.testing.assert_allclose(delta, alpha / 2 * np.array(layer.lora_kernel_a) @ np.array(layer.lora_kernel_b), atol=1e-6)
        outputs.append(np.array(model(IDS)))
    assert not np.allclose(outputs[0], outputs[1])


def test_lora_target_that_matches_nothing_is_a_clear_error():
    model = SequenceClassifier(_gpt(1), num_classes=2)
    model.build((None, None))
    with pytest.raises(ConfigError, match="matches no Dense layer.*attn/qkv"):
        apply_lora(model, rank=2, targets="*/nothing")
    with pytest.raises(ConfigError, match="lora_rank"):
        apply_lora(model, rank=0)
