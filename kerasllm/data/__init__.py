"""Corpora and tf.data pipelines."""

from kerasllm.data.corpus import dataset_names, load_corpus, read_text_file, resolve_paths
from kerasllm.data.augment import TextAugmenter, load_synonyms
from kerasllm.data.cleaning import clean_documents, load_stopwords, remove_stopwords
from kerasllm.data.pipeline import (
    classification_dataset,
    encode_documents,
    lm_dataset,
    pad_sequences,
    split_documents,
)
from kerasllm.data.readers import read_documents, read_labelled

__all__ = [
    "TextAugmenter",
    "classification_dataset",
    "clean_documents",
    "load_stopwords",
    "load_synonyms",
    "pad_sequences",
    "remove_stopwords",
    "dataset_names",
    "encode_documents",
    "lm_dataset",
    "load_corpus",
    "read_documents",
    "read_labelled",
    "read_text_file",
    "resolve_paths",
    "split_documents",
]
