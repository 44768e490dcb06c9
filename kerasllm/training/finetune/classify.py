"""Sequence classification: labelled texts -> a `SequenceClassifier` on the pretrained backbone,
scored beside the majority-class and naive Bayes baselines."""

from dataclasses import dataclass

import keras
import numpy as np

from kerasllm.data.batches import encode_texts, make_dataset
from kerasllm.data.labels import class_weight_dict, label_ids, label_names
from kerasllm.data.readers import read_labelled
from kerasllm.models import build_model
from kerasllm.models.classifier import SequenceClassifier, truncate_backbone
from kerasllm.models.lora import apply_lora
from kerasllm.training.baselines import compare, format_comparison
from kerasllm.training.finetune.common import holdout
from kerasllm.training.metrics import classification_report, confusion_matrix
from kerasllm.training.optimizers import build_optimizer


@dataclass
class Split:
    """One labelled set: raw texts, class indices and (for model input) padded ids."""

    texts: list
    y: np.ndarray
    ids: np.ndarray = None


@dataclass
class Examples:
    names: list
    train: Split
    val: Split
    test: Split = None

    @property
    def train_size(self):
        return len(self.train.y)


def read_split(path, finetune):
    """`(texts, labels)` of a labelled file with the columns `finetune` names."""
    texts, labels = read_labelled(
        path, text_column=finetune.text_column or None, label_column=finetune.label_column or None
    )
    return list(texts), [str(label) for label in labels]


def training_split(config):
    """The examples the model trains on: the training file minus the held-out validation rows
    (when no `finetune.val_data` is given). Returns `(texts, labels, val_texts, val_labels)`."""
    ft = config.finetune
    texts, labels = read_split(config.data.dataset, ft)
    if ft.val_data:
        return (texts, labels, *read_split(ft.val_data, ft))
    keep, held = holdout(len(texts), ft.val_fraction, config.train.seed)
    return ([texts[i] for i in keep], [labels[i] for i in keep], [texts[i] for i in held], [labels[i] for i in held])


def load_examples(config, tokenizer, backbone=None):
    """Reads, labels and encodes the training, validation and (optional) test files."""
    ft, data = config.finetune, str(config.data.dataset)
    texts, labels, val_texts, val_labels = training_split(config)
    names = label_names(labels, source=data)

    def split(texts, labels, source):
        return Split(texts, label_ids(labels, names, source), encode_texts(tokenizer, texts, ft.max_length))

    test = None
    if ft.test_data:
        test_texts, test_labels = read_split(ft.test_data, ft)
        test = Split(test_texts, label_ids(test_labels, names, str(ft.test_data)))
    return Examples(names, split(texts, labels, data), split(val_texts, val_labels, ft.val_data or data), test)


def with_dropout(backbone, rate):
    """`backbone` itself when it drops out at `rate`, else a copy with the same weights that does.

    Examples:

    >>> from kerasllm.models.gpt import GPT
    >>> lm = GPT(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)
    >>> lm.build((None, None))
    >>> with_dropout(lm, 0.0) is lm, with_dropout(lm, 0.1).dropout
    (True, 0.1)
    """
    if backbone.dropout == rate:
        return backbone
    copy = type(backbone).from_config({**backbone.get_config(), "dropout": rate})
    copy.build((None, None))
    copy.set_weights(backbone.get_weights())
    return copy


def build_classifier(config, backbone, tokenizer, labels):
    """The classifier `config.finetune` describes, on `backbone` (a pretrained LM).

    Applies, in order: `from_scratch` (fresh weights, same architecture), `drop_blocks`,
    `model.dropout` (the backbone's dropout while fine-tuning), the head (`pooling`, `add_dense`), `freeze_blocks`, and LoRA (`lora_rank > 0`: only the
    adapters and the head train).
    """
    ft = config.finetune
    if ft.from_scratch:
        keras.utils.set_random_seed(config.train.seed)
        backbone = build_model(config.model, vocab_size=backbone.vocab_size)
    backbone = with_dropout(truncate_backbone(backbone, ft.drop_blocks), config.model.dropout)
    keras.utils.set_random_seed(config.train.seed)
    model = SequenceClassifier(
        backbone, num_classes=len(labels), pooling=ft.pooling, add_dense=ft.add_dense,
        head_dropout=ft.head_dropout, pad_id=tokenizer.pad_id, labels=labels,
    )
    model.build((None, None))
    model.freeze_blocks(ft.freeze_blocks)
    if ft.lora_rank:
        apply_lora(
            model, ft.lora_rank, alpha=ft.lora_alpha, targets=ft.lora_targets,
            trainable=[*model.hidden, model.classifier_head],
        )
    return model


def build(config, backbone, tokenizer, examples):
    """The classifier, compiled with the (resolved) `[train]` optimizer and schedule."""
    model = build_classifier(config, backbone, tokenizer, examples.names)
    model.compile(
        optimizer=build_optimizer(config.train, model),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config.train.jit_compile,
    )
    return model


def describe(config, examples):
    return (
        f"classify: {examples.train_size:,} train / {len(examples.val.y):,} val examples, labels "
        f"{examples.names}, {config.finetune.max_length} tokens"
    )


def datasets(config, tokenizer, examples):
    """`(train_ds, val_ds, fit_kwargs)`: repeated shuffled training batches, validation batches."""
    train, pad = config.train, tokenizer.pad_id
    train_ds = make_dataset((examples.train.ids, examples.train.y), train.batch_size, True, train.seed, pad)
    val_ds = make_dataset((examples.val.ids, examples.val.y), 64, trim_pad_id=pad)
    weights = class_weight_dict(config.finetune.class_weights, examples.names, examples.train.y)
    return train_ds.repeat(), val_ds, {"class_weight": weights}


def predict_classes(model, ids, batch_size=64, pad_id=0):
    logits = model.predict(make_dataset((ids,), batch_size, trim_pad_id=pad_id), verbose=0)
    return np.argmax(logits, axis=-1)


def evaluate_classifier(model, tokenizer, texts, labels, max_length, source="data"):
    """Classification report of `model` on raw texts and labels (names from `model.labels`)."""
    y = label_ids(labels, model.labels, source)
    return _report(model, tokenizer, texts, y, max_length)


def _report(model, tokenizer, texts, y, max_length):
    predicted = predict_classes(model, encode_texts(tokenizer, texts, max_length), pad_id=tokenizer.pad_id)
    return classification_report(confusion_matrix(y, predicted, len(model.labels)), model.labels)


def evaluate(model, config, tokenizer, examples, log):
    """Validation (and test) reports of the kept model beside both baselines, for metrics.json."""
    train, max_length = examples.train, config.finetune.max_length
    metrics = {"task": "classify", "labels": examples.names}
    for name, split in (("val", examples.val), ("test", examples.test)):
        if split is None:
            continue
        report = _report(model, tokenizer, split.texts, split.y, max_length)
        comparison = compare(report, train.texts, train.y, split.texts, split.y)
        metrics.update({f"{name}_accuracy": report["accuracy"], f"{name}_macro_f1": report["macro"]["f1"], name: comparison})
        title = f"{name} ({report['examples']:,} examples)"
        log("\n" + format_comparison(comparison, title=title))
    metrics["verdict"] = metrics["test" if examples.test else "val"]["verdict"]
    return metrics


def info(examples):
    return {"labels": examples.names}
