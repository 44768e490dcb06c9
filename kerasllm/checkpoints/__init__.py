"""Pretrained checkpoints in and out: Hugging Face folders and keras-hub presets.

    config, tokenizer, model = load_pretrained("hf://openai-community/gpt2")
    config, tokenizer, model = load_pretrained("path/to/Qwen3-0.6B")      # a local HF folder
    config, tokenizer, model = load_pretrained("path/to/preset")          # a keras-hub preset
    save_hf(model, tokenizer, "out/")                                     # and back

The model is kerasllm's own `GPT`, so everything kerasllm does with a model it trained
(fine-tuning, LoRA, classifiers, cached generation, SavedModel export) applies. Supported
`model_type`s: gpt2, llama (2 and 3.x, rope_scaling linear/llama3), mistral, qwen2, qwen3, gemma.
"""

from pathlib import Path

from kerasllm.checkpoints.hf import (
    LLAMA_LAYOUT, SUPPORTED_MODEL_TYPES, build_unset_model, layout_of, load_weights, model_config_from_hf,
    read_config,
)
from kerasllm.checkpoints.sources import folder_format, is_pretrained_source, resolve


def load_pretrained(source, block_size=None):
    """Loads a pretrained checkpoint into kerasllm's `GPT`.

    Args:
        source: a Hugging Face checkpoint folder, a keras-hub preset folder, `hf://ORG/NAME`
            or a keras-hub preset name.
        block_size: context to run with; `None`: the checkpoint's. Longer than the
            checkpoint's is a `ConfigError`.

    Returns:
        `(config, tokenizer, model)`, as `kerasllm.training.load_run` returns for a run: a
        `kerasllm.config.Config` whose `[model]` describes the checkpoint, a
        `PretrainedTokenizer` and a built `GPT` holding the checkpoint's weights.

    Raises:
        DataError / ConfigError: one line naming the file or key at fault.

    Examples:

    >>> import tempfile, numpy as np
    >>> from kerasllm.checkpoints.writer import save_hf
    >>> from kerasllm.models import GPT
    >>> from kerasllm.tokenizers import ByteTokenizer
    >>> tokenizer = ByteTokenizer()
    >>> model = GPT(vocab_size=tokenizer.vocabulary_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
    ...             mlp_activation="gelu_tanh")
    >>> folder = save_hf(model, tokenizer, tempfile.mkdtemp())
    >>> config, loaded_tokenizer, loaded = load_pretrained(folder)
    >>> config.model.n_embd, loaded_tokenizer.encode("hi").tolist() == tokenizer.encode("hi").tolist()
    (16, True)
    >>> x = np.array([[5, 6, 7]])
    >>> bool(np.allclose(loaded(x), model(x), atol=1e-6))
    True
    """
    from kerasllm.checkpoints.safetensors_io import SafetensorsCheckpoint
    from kerasllm.config import Config
    from kerasllm.tokenizers.pretrained import PretrainedTokenizer

    folder, kind = resolve(source)
    if kind == "hf":
        hf = read_config(folder)
        model_config = model_config_from_hf(hf, source=str(Path(folder) / "config.json"), block_size=block_size)
        tokenizer = PretrainedTokenizer.from_directory(folder)
        checkpoint = SafetensorsCheckpoint(folder)
    else:
        from kerasllm.checkpoints.keras_hub_preset import (
            InMemoryCheckpoint, backbone_hf_config, backbone_hf_tensors, load_preset_backbone, preset_tokenizer,
        )

        tokenizer = preset_tokenizer(folder)
        backbone = load_preset_backbone(folder)
        hf = backbone_hf_config(backbone)
        model_config = model_config_from_hf(hf, source=str(Path(folder) / "config.json"), block_size=block_size)
        checkpoint = InMemoryCheckpoint(backbone_hf_tensors(backbone), folder)
        del backbone
    model = build_unset_model(model_config)  # no random init: the checkpoint is the first value
    load_weights(model, layout_of(hf["model_type"]), checkpoint)
    config = Config(name=Path(str(source).rstrip("/")).name or "pretrained", model=model_config)
    config.data.tokenizer = "pretrained"
    return config, tokenizer, model


def pretrained_model_config(source):
    """The `ModelConfig` of a checkpoint (any `load_pretrained` source), read from its
    `config.json` without reading its weights: what `plan --model` sizes.

    Examples:

    >>> import tempfile
    >>> from kerasllm.checkpoints.writer import save_hf
    >>> from kerasllm.models import GPT
    >>> from kerasllm.tokenizers import ByteTokenizer
    >>> model = GPT(vocab_size=ByteTokenizer().vocabulary_size, block_size=16, n_layer=2, n_head=2, n_embd=16,
    ...             mlp_activation="gelu_tanh")
    >>> config = pretrained_model_config(save_hf(model, ByteTokenizer(), tempfile.mkdtemp()))
    >>> config.n_layer, config.block_size, config.vocab_size == model.vocab_size
    (2, 16, True)
    """
    folder, kind = resolve(source)
    if kind == "hf":
        hf = read_config(folder)
    else:
        from kerasllm.checkpoints.keras_hub_preset import preset_hf_config

        hf = preset_hf_config(folder)
    return model_config_from_hf(hf, source=str(Path(folder) / "config.json"))


__all__ = [
    "LLAMA_LAYOUT", "SUPPORTED_MODEL_TYPES", "folder_format", "is_pretrained_source", "load_pretrained",
    "pretrained_model_config", "resolve",
]
