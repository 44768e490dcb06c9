"""LoRA adapters on a model's Dense layers, through Keras 3's `Dense.enable_lora`.

`enable_lora(layer.rank, lora_alpha)` freezes the layer's kernel and adds two trainable
float32 matrices `A (in, rank)` and `B (rank, out)` (B starts at zero, so the model is unchanged
at first); the layer then computes with `kernel + (alpha / rank) * A @ B`. `merge_lora` folds
that update into plain kernels for export.
"""

import fnmatch

import keras

from kerasllm._keras_compat import flatten_layers, owns_variables
from kerasllm.errors import ConfigError


def dense_layers(model):
    """Every `keras.layers.Dense` inside `model`, as `{path: layer}` in build order."""
    return {layer.path: layer for layer in flatten_layers(model) if isinstance(layer, keras.layers.Dense)}


def apply_lora(model, rank, alpha=0.0, targets="*/attn/qkv,*/attn/proj", trainable=()):
    """Freezes `model` and enables LoRA adapters on the Dense layers whose path matches.

    Args:
        model: a built Keras model.
        rank: adapter rank (> 0).
        alpha: scale numerator, updates are scaled by `alpha / rank`; 0 means `alpha = rank`.
        targets: comma-separated glob patterns matched against each Dense layer's `path`
            (e.g. `"*/attn/qkv,*/mlp/*"`).
        trainable: layers that stay fully trainable (e.g. a new classification head).

    Returns:
        The paths of the layers that got adapters.

    Examples:

    >>> import numpy as np
    >>> from kerasllm.models import GPT
    >>> lm = GPT(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16)
    >>> lm.build((None, 8))
    >>> len(apply_lora(lm, rank=2, targets="*/attn/qkv"))
    2
    >>> len(lm.trainable_weights)  # A and B of two layers
    4
    """
    if rank <= 0:
        raise ConfigError(f"finetune.lora_rank = {rank}: expected a positive integer")
    patterns = [p.strip() for p in targets.split(",") if p.strip()]
    candidates = dense_layers(model)
    chosen = [path for path in candidates if any(fnmatch.fnmatchcase(path, p) for p in patterns)]
    if not chosen:
        raise ConfigError(
            f"finetune.lora_targets = {targets!r} matches no Dense layer; the model has: "
            f"{', '.join(candidates)}"
        )
    keep = {id(layer) for layer in trainable}
    for layer in flatten_layers(model, include_self=False, recursive=False):
        if id(layer) not in keep:
            layer.trainable = False
    for path in chosen:
        layer = candidates[path]
        layer.trainable = True  # re-enables the layer; enable_lora freezes its kernel and bias below
        layer.enable_lora(rank, lora_alpha=alpha or None)
        if layer.bias is not None:
            layer.bias.trainable = False
    return chosen


def merge_lora(model):
    """A copy of `model` without adapters, whose kernels are `kernel + (alpha/rank) * A @ B`.

    The copy computes the same function as the adapter model (up to float rounding) with
    plain Dense layers: what gets exported.
    """
    merged = model.__class__.from_config(model.get_config())
    merged.build((None, None))
    pairs = list(zip(_weight_layers(merged), _weight_layers(model)))
    if len(_weight_layers(merged)) != len(_weight_layers(model)):
        raise RuntimeError("merge_lora: the rebuilt model has a different layer structure")
    for new_layer, old_layer in pairs:
        if isinstance(old_layer, keras.layers.Dense):
            new_layer.kernel.assign(old_layer.kernel)  # the `kernel` property merges the adapters
            if old_layer.bias is not None:
                new_layer.bias.assign(old_layer.bias)
        else:
            new_layer.set_weights(old_layer.get_weights())
    return merged


def _weight_layers(model):
    """Leaf layers that own weights, in a deterministic order."""
    return [
        layer for layer in flatten_layers(model, include_self=False) if owns_variables(layer)
    ]
