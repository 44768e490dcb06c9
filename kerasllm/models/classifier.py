"""A sequence classifier on top of a pretrained language model (GPT or LSTM)."""

import keras
from keras import ops

from kerasllm.errors import ConfigError
from kerasllm.models.gpt import GPT
from kerasllm.models.lstm import LSTMLanguageModel


def truncate_backbone(backbone, drop_blocks):
    """A copy of `backbone` without its top `drop_blocks` blocks (GPT) or LSTM layers.

    The copy holds the same weights for every layer it keeps; the dropped layers are not in it
    at all (not merely unused), so they cost no memory and are not saved.

    Examples:

    >>> import numpy as np
    >>> lm = GPT(vocab_size=20, block_size=8, n_layer=3, n_head=2, n_embd=16)
    >>> len(truncate_backbone(lm, 1).blocks)
    2
    """
    if drop_blocks == 0:
        return backbone
    if not 0 < drop_blocks < backbone.n_layer:
        raise ConfigError(
            f"finetune.drop_blocks = {drop_blocks}: expected 0 <= drop_blocks < {backbone.n_layer} "
            f"(the pretrained model has {backbone.n_layer} layers)"
        )
    if not backbone.built:
        backbone.build((None, None))
    config = backbone.get_config()
    config["n_layer"] = backbone.n_layer - drop_blocks
    smaller = type(backbone).from_config(config)
    smaller.build((None, None))
    old_layers = _sublayers(backbone)
    if isinstance(backbone, GPT):  # the final norm pairs with the final norm, not a dropped block
        old_layers = old_layers[: -1 - drop_blocks] + old_layers[-1:]
    else:
        old_layers = old_layers[:-drop_blocks]
    for new, old in zip(_sublayers(smaller), old_layers, strict=True):
        new.set_weights(old.get_weights())
    return smaller


def _sublayers(backbone):
    """Weight-holding sublayers from the bottom up (embeddings, blocks, top)."""
    if isinstance(backbone, GPT):
        layers = [backbone.token_embedding, backbone.position_embedding, *backbone.blocks]
        return [layer for layer in layers if layer is not None] + [backbone.final_norm]
    return [backbone.token_embedding, *backbone.lstms]


@keras.saving.register_keras_serializable(package="kerasllm")
class SequenceClassifier(keras.Model):
    """Pretrained LM features -> pooling over non-pad tokens -> Dense head -> class logits.

    The backbone runs without its LM head: a GPT gives the final-norm hidden states, an LSTM
    its last layer's outputs. Inputs are right-padded with `pad_id`; since both backbones are
    causal, the states of real tokens never see the padding, so `"last"` (the state of the last
    non-pad token) and `"mean"` (the mean over non-pad tokens) pooling are exact.

    Args:
        backbone: a built `GPT` or `LSTMLanguageModel`; its layers (and weights) are reused.
        num_classes: number of classes (2 for binary tasks; the head outputs one logit each).
        pooling: "last" or "mean".
        add_dense: new `Dense(width, gelu)` layers between pooling and the output layer.
        head_dropout: dropout before each head layer.
        pad_id: the padding token id.
        labels: the class names, index i is class i (saved with the model).

    Call arguments:
        token_ids: int tensor `(batch, time)`, right-padded with `pad_id`.

    Returns:
        float32 logits `(batch, num_classes)`.

    Examples:

    >>> import numpy as np
    >>> lm = GPT(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16)
    >>> model = SequenceClassifier(lm, num_classes=3, add_dense=1, labels=["a", "b", "c"])
    >>> tuple(model(np.array([[5, 6, 7, 0], [5, 0, 0, 0]])).shape)
    (2, 3)
    """

    def __init__(
        self,
        backbone,
        num_classes,
        pooling="last",
        add_dense=0,
        head_dropout=0.0,
        pad_id=0,
        labels=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(backbone, (GPT, LSTMLanguageModel)):
            raise ConfigError(f"backbone must be a GPT or LSTMLanguageModel, got {type(backbone).__name__}")
        if pooling not in ("last", "mean"):
            raise ConfigError(f"finetune.pooling = {pooling!r}: expected 'last' or 'mean'")
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
        if labels is not None and len(labels) != num_classes:
            raise ConfigError(f"{len(labels)} labels given for {num_classes} classes")
        self.backbone = backbone
        self.num_classes = num_classes
        self.pooling = pooling
        self.add_dense = add_dense
        self.head_dropout = head_dropout
        self.pad_id = pad_id
        self.labels = list(labels) if labels is not None else [str(i) for i in range(num_classes)]
        self.width = backbone.n_embd if isinstance(backbone, GPT) else backbone.hidden_size
        self.dropouts = [keras.layers.Dropout(head_dropout) for _ in range(add_dense + 1)]
        self.hidden = [
            keras.layers.Dense(self.width, activation="gelu", name=f"head_dense_{i}") for i in range(add_dense)
        ]
        self.classifier_head = keras.layers.Dense(num_classes, name="classifier_head")

    def build(self, input_shape=(None, None)):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        for layer in self.hidden:
            layer.build((input_shape[0], self.width))
        self.classifier_head.build((input_shape[0], self.width))
        self.built = True

    def features(self, token_ids, training=None):
        """Per-token hidden states `(batch, time, width)` of the backbone, without its LM head."""
        b = self.backbone
        if isinstance(b, GPT):
            return b.features(token_ids, training=training)
        x = b.embedding_dropout(b.token_embedding(token_ids), training=training)
        for lstm, dropout in zip(b.lstms, b.dropouts):
            x = dropout(lstm(x, training=training)[0], training=training)
        return x

    def pool(self, hidden, token_ids):
        mask = ops.cast(ops.not_equal(token_ids, self.pad_id), hidden.dtype)  # (B, T)
        if self.pooling == "mean":
            total = ops.sum(hidden * mask[:, :, None], axis=1)
            return total / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
        last = ops.maximum(ops.cast(ops.sum(mask, axis=1), "int32") - 1, 0)  # (B,)
        return ops.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # (B, C)

    def call(self, token_ids, training=None):
        x = self.pool(self.features(token_ids, training=training), token_ids)
        for dropout, dense in zip(self.dropouts, self.hidden):
            x = dense(dropout(x, training=training))
        x = self.dropouts[-1](x, training=training)
        return ops.cast(self.classifier_head(x), "float32")

    def freeze_blocks(self, n):
        """Freezes the embeddings and the bottom `n` blocks / LSTM layers (`-1`: the whole backbone)."""
        layers = _sublayers(self.backbone)
        n_layer = self.backbone.n_layer
        if n == -1:
            n = n_layer
        if not 0 <= n <= n_layer:
            raise ConfigError(
                f"finetune.freeze_blocks = {n}: expected -1 or 0..{n_layer} (the backbone has {n_layer} layers)"
            )
        if n == 0:
            return
        n_embedding = len(layers) - n_layer - (1 if isinstance(self.backbone, GPT) else 0)
        for layer in layers[: n_embedding + n]:
            layer.trainable = False
        if n == n_layer and isinstance(self.backbone, GPT):
            self.backbone.final_norm.trainable = False

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            num_classes=self.num_classes,
            pooling=self.pooling,
            add_dense=self.add_dense,
            head_dropout=self.head_dropout,
            pad_id=self.pad_id,
            labels=self.labels,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
