"""Published architectures as `ModelConfig`s: GPT-2 (124M to 1.5B) and LLaMA-7B, plus tiny twins.

Each full preset reproduces the published parameter count exactly with kerasllm's layers
(tested): GPT-2 small 124,439,808 (learned positions, LayerNorm with bias, GELU, biases, tied
head); LLaMA-7B 6,738,415,616 (RoPE, RMSNorm weight only, SwiGLU 11008, no biases, untied head).
A `-tiny` twin keeps every architectural switch of its preset with small dimensions, so the
exact architecture trains end to end on a CPU in seconds.
"""

import dataclasses

from kerasllm.config import ModelConfig
from kerasllm.errors import ConfigError

_GPT2 = dict(arch="gpt", positions="learned", norm="layernorm", mlp="gelu", bias=True,
             tie_embeddings=True, norm_eps=1e-5, dropout=0.0)
_LLAMA = dict(arch="gpt", positions="rope", norm="rmsnorm", mlp="swiglu", bias=False,
              tie_embeddings=False, norm_eps=1e-6, rope_theta=10000.0, dropout=0.0)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named architecture and the global batch its authors trained with."""

    model: dict
    batch_tokens: int  # global batch in tokens used by the original training run
    published_params: int
    source: str


PRESETS = {
    # Radford et al. 2019 (GPT-2); shapes as in the released checkpoints / nanoGPT's
    # GPTConfig; 0.5M-token batches as nanoGPT's train_gpt2 (480 x 1024).
    "gpt2-124m": Preset(dict(_GPT2, vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
                        491_520, 124_439_808, "GPT-2 small"),
    "gpt2-350m": Preset(dict(_GPT2, vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
                        491_520, 354_823_168, "GPT-2 medium"),
    "gpt2-774m": Preset(dict(_GPT2, vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
                        491_520, 774_030_080, "GPT-2 large"),
    "gpt2-1.5b": Preset(dict(_GPT2, vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
                        491_520, 1_557_611_200, "GPT-2 XL"),
    # Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models", Table 2:
    # 32 layers, dim 4096, 32 heads, context 2048, 4M-token batches; SwiGLU hidden 11008.
    "llama-7b": Preset(dict(_LLAMA, vocab_size=32000, block_size=2048, n_layer=32, n_head=32, n_embd=4096,
                            mlp_hidden=11008),
                       4_194_304, 6_738_415_616, "LLaMA-7B"),
}

# Tiny twins: the same switches (and the same head-dim/width ratios where it matters), small
# enough to build, shard 8 ways and train on a CPU in a test.
_TINY = {
    "gpt2-124m": dict(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64),
    "gpt2-350m": dict(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=64),
    "gpt2-774m": dict(vocab_size=512, block_size=64, n_layer=3, n_head=5, n_embd=80),
    "gpt2-1.5b": dict(vocab_size=512, block_size=64, n_layer=4, n_head=5, n_embd=100),
    "llama-7b": dict(vocab_size=320, block_size=64, n_layer=2, n_head=4, n_embd=64, mlp_hidden=176),
}
for _name, _dims in _TINY.items():
    _full = PRESETS[_name]
    PRESETS[f"{_name}-tiny"] = Preset(dict(_full.model, **_dims), 8 * _dims["block_size"], 0, f"{_full.source}, tiny dims")


def preset_names():
    """Names of every preset, full and tiny."""
    return list(PRESETS)


def get_preset(name):
    """The `ModelConfig` of a preset.

    Args:
        name: one of `preset_names()`, e.g. "gpt2-124m", "llama-7b" or "llama-7b-tiny".

    Returns:
        A new `kerasllm.config.ModelConfig` (safe to modify).

    Examples:

    >>> get_preset("llama-7b").mlp_hidden
    11008
    >>> from kerasllm.models import build_model
    >>> build_model(get_preset("llama-7b-tiny")).count_params()
    141632
    """
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r}: unknown; expected one of {', '.join(PRESETS)}")
    return ModelConfig(**PRESETS[name].model)


def preset_toml(name):
    """The `[model]` table of a recipe that builds preset `name` (no `--set` needed)."""
    from kerasllm.config import _toml_value

    lines = [f"[model]  # preset {name}: {PRESETS[name].source if name in PRESETS else ''}"]
    for key, value in dataclasses.asdict(get_preset(name)).items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
