"""Corpora and tf.data pipelines."""

from kerasllm.data.corpus import dataset_names, load_corpus, read_text_file, resolve_paths
from kerasllm.data.pipeline import encode_documents, lm_dataset, split_documents
from kerasllm.data.readers import read_documents, read_labelled

__all__ = [
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
