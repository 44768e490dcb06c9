"""A fine-tuned `SequenceClassifier` as a `tf.Module` with a text-in `classify` signature."""

import tensorflow as tf

from kerasllm.errors import ConfigError
from kerasllm.export.graph import encode, model_variables, tokenizer_resources, traced_portably
from kerasllm.models.classifier import SequenceClassifier

CLASSIFY_SIGNATURE = [tf.TensorSpec([None], tf.string, name="text")]


class _Untracked:
    """Holds the Keras objects out of the module's object graph."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer


class ClassifierServer(tf.Module):
    """A `SequenceClassifier` and its tokenizer, ready for `tf.saved_model.save`.

    Signature `classify(text)` (also `serving_default`) -> `probabilities` (float32
    `[batch, classes]`, softmax of the logits), `label` (string `[batch]`, the likeliest class
    name), `class_index` (int32 `[batch]`). Texts are encoded exactly as fine-tuning encoded
    them: their first `max_length` tokens, right-padded with `<pad>`.

    Args:
        model: a `SequenceClassifier`.
        tokenizer: the run's tokenizer.
        max_length: tokens per text (fine-tuning's `finetune.max_length`, else `block_size`).

    Examples:

    >>> import tensorflow as tf
    >>> from kerasllm.models import GPT
    >>> from kerasllm.models.classifier import SequenceClassifier
    >>> from kerasllm.tokenizers import CharTokenizer
    >>> tokenizer = CharTokenizer.train(["good bad"])
    >>> lm = GPT(vocab_size=tokenizer.vocabulary_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    >>> model = SequenceClassifier(lm, num_classes=2, labels=["neg", "pos"])
    >>> server = ClassifierServer(model, tokenizer, max_length=16)
    >>> server.classify(tf.constant(["good", "bad"]))["probabilities"].shape
    TensorShape([2, 2])
    """

    def __init__(self, model, tokenizer, max_length, name="classifier"):
        super().__init__(name=name)
        if not isinstance(model, SequenceClassifier):
            raise ConfigError(f"a classifier export needs a SequenceClassifier, got {type(model).__name__}")
        if max_length < 1:
            raise ConfigError(f"finetune.max_length = {max_length}: expected a positive integer")
        if not model.built:
            model.build((None, max_length))
        self.max_length = int(max_length)
        self.labels = list(model.labels)
        self.pad_id = int(model.pad_id)
        self.tokenizer_kind = tokenizer.kind
        self.backbone_class = type(model.backbone).__name__
        self.weights = model_variables(model)
        self.tokenizer_tables = tokenizer_resources(tokenizer)
        self._keras = _Untracked(model, tokenizer)
        self.classify = tf.function(traced_portably(self._classify), input_signature=CLASSIFY_SIGNATURE)

    def signatures(self):
        return {"serving_default": self.classify, "classify": self.classify}

    def describe(self):
        return [
            f"model: SequenceClassifier on a {self.backbone_class}, labels {list(self.labels)}",
            f"tokenizer: {self.tokenizer_kind} (runs in the graph)",
            f"classify: each text's first {self.max_length} tokens are used (as in fine-tuning)",
        ]

    def _classify(self, text):
        model, tokenizer = self._keras.model, self._keras.tokenizer
        ids = encode(tokenizer, text)[:, : self.max_length]
        ids = ids.to_tensor(self.pad_id, shape=[tf.shape(text)[0], self.max_length])
        probabilities = tf.nn.softmax(model(ids), axis=-1)
        index = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "label": tf.gather(tf.constant(self.labels), index),
            "class_index": index,
        }
