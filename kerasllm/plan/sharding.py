"""The plan's layout applied with `keras.distribution` (JAX backend).

A 2-D device mesh `("batch", "model")` covers every strategy the planner recommends:

- data parallel: mesh `(n, 1)`, weights replicated (`keras.distribution.DataParallel`);
- FSDP: mesh `(n, 1)`, every matrix also split along `"batch"`, so each device stores `1/n`
  of weights, gradients and optimizer state and XLA all-gathers a layer when it runs;
- tensor parallel (Megatron): mesh `(n/tp, tp)`, the fused QKV and MLP input kernels split by
  columns and the output projections by rows over `"model"`, the vocabulary over `"model"`;
- both: a matrix split along `"batch"` on one axis and `"model"` on the other, the layout of
  keras-hub's Gemma/LLaMA `get_layout_map`.

A dimension is only split when the mesh axis divides it (GPT-2's vocabulary of 50257 stays
whole); norms, biases of output projections and position tables stay replicated.
"""

import keras

from kerasllm.plan.params import weight_shapes

BATCH, MODEL = "batch", "model"

# (pattern of the variable path, axis per dimension): B = the batch (FSDP) axis, M = model axis.
_RULES = [
    ("token_embedding/embeddings", (MODEL, BATCH)),  # (vocab, d)
    ("token_embedding/reverse_embeddings", (BATCH, MODEL)),  # (d, vocab)
    ("position_embedding/embeddings", (None, BATCH)),  # (block, d)
    ("attn/qkv/kernel", (BATCH, MODEL)),  # column parallel
    ("attn/qkv/bias", (MODEL,)),
    ("attn/proj/kernel", (MODEL, BATCH)),  # row parallel
    ("mlp/fc/kernel", (BATCH, MODEL)),
    ("mlp/fc/bias", (MODEL,)),
    ("mlp/proj/kernel", (MODEL, BATCH)),
    ("lstm_cell/kernel", (BATCH, MODEL)),
    ("lstm_cell/recurrent_kernel", (None, MODEL)),
    ("lstm_cell/bias", (MODEL,)),
    ("head/kernel", (BATCH, MODEL)),
    ("head/bias", (MODEL,)),
    ("projection/kernel", (MODEL, BATCH)),
]


def weight_layouts(model_config, mesh_shape, fsdp=True, vocab_size=None):
    """Planned axes of every weight: `{path: (axis or None, ...)}` for a `(batch, model)` mesh.

    Args:
        model_config: a `kerasllm.config.ModelConfig`.
        mesh_shape: `(batch_size, model_size)` of the device mesh.
        fsdp: split weights along the batch axis too.
        vocab_size: overrides `model_config.vocab_size`.

    Returns:
        A dict from variable path (without the model-name prefix) to a tuple of mesh-axis
        names or None, one per dimension.
    """
    sizes = {BATCH: mesh_shape[0] if fsdp else 1, MODEL: mesh_shape[1]}
    out = {}
    for w in weight_shapes(model_config, vocab_size):
        axes = next((rule for pattern, rule in _RULES if w.path.endswith(pattern)), (None,) * len(w.shape))
        out[w.path] = tuple(
            axis if axis and sizes[axis] > 1 and dim % sizes[axis] == 0 else None
            for axis, dim in zip(axes, w.shape)
        )
    return out


def layout_map(model_config, device_mesh, fsdp=True, vocab_size=None):
    """A `keras.distribution.LayoutMap` of the model's weights over `device_mesh`.

    Args:
        model_config: a `kerasllm.config.ModelConfig`.
        device_mesh: a `keras.distribution.DeviceMesh` with axes `("batch", "model")`.
        fsdp: also shard weights along `"batch"` (fully sharded data parallel).
        vocab_size: overrides `model_config.vocab_size`.

    Returns:
        A `LayoutMap` for `keras.distribution.ModelParallel(layout_map=..., batch_dim_name="batch")`.

    Examples:

    >>> import keras
    >>> from kerasllm.models.presets import get_preset
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), ["cpu:0"])
    >>> layout = layout_map(get_preset("llama-7b-tiny"), mesh)
    >>> layout[".*/block_0/attn/qkv/kernel"].axes
    (None, None)
    """
    if tuple(device_mesh.axis_names) != (BATCH, MODEL):
        raise ValueError(f"device_mesh axes must be {(BATCH, MODEL)}, got {tuple(device_mesh.axis_names)}")
    layouts = keras.distribution.LayoutMap(device_mesh)
    for path, axes in weight_layouts(model_config, device_mesh.shape, fsdp, vocab_size).items():
        layouts[".*/" + path.replace(".", r"\.")] = keras.distribution.TensorLayout(axes)
    return layouts


def make_distribution(model_config, strategy="data", tensor_parallel=1, devices=None, vocab_size=None):
    """The `keras.distribution` object of a planned strategy.

    Args:
        model_config: a `kerasllm.config.ModelConfig`.
        strategy: "data", "fsdp", "tensor" or "fsdp+tensor" (a plan's `recommendation`).
        tensor_parallel: size of the model axis for "tensor" / "fsdp+tensor".
        devices: device names; `None`: `keras.distribution.list_devices()`.
        vocab_size: overrides `model_config.vocab_size`.

    Returns:
        `DataParallel` for "data", else `ModelParallel` with `layout_map(...)`. Use it with
        `keras.distribution.set_distribution(...)` or as a context manager
        (`with distribution.scope(): model = build_model(...)`).
    """
    devices = devices or keras.distribution.list_devices()
    if strategy == "data":
        return keras.distribution.DataParallel(devices=devices)
    tp = tensor_parallel if "tensor" in strategy else 1
    if len(devices) % tp:
        raise ValueError(f"{len(devices)} devices cannot form a mesh with a model axis of {tp}")
    mesh = keras.distribution.DeviceMesh((len(devices) // tp, tp), (BATCH, MODEL), devices)
    layouts = layout_map(model_config, mesh, fsdp=strategy != "tensor", vocab_size=vocab_size)
    return keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name=BATCH)
