"""Corpora and tf.data pipelines.

The names below are imported from their modules on first use, so `kerasllm.data.corpus`
(all a command's `--help` needs) loads without TensorFlow.
"""

import importlib

_HOMES = {
    "dataset_names": "corpus",
    "load_corpus": "corpus",
    "read_text_file": "corpus",
    "resolve_paths": "corpus",
    "TextAugmenter": "augment",
    "load_synonyms": "augment",
    "clean_documents": "cleaning",
    "load_stopwords": "cleaning",
    "remove_stopwords": "cleaning",
    "classification_dataset": "pipeline",
    "encode_documents": "pipeline",
    "lm_dataset": "pipeline",
    "pad_sequences": "pipeline",
    "split_documents": "pipeline",
    "read_documents": "readers",
    "read_labelled": "readers",
}

__all__ = sorted(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'kerasllm.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kerasllm.data.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
