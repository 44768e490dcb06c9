"""keras-hub presets <-> Hugging Face tensors, through keras-hub's own converters.

A preset is read by keras-hub itself (`Backbone.from_preset`), turned into Hugging Face
tensor names by keras-hub's exporters (`keras_hub/src/utils/transformers/export`), and then
imported exactly as a Hugging Face folder is. keras-hub has no Qwen3 exporter, and its Gemma one
fits only Gemma 2B's shapes; `qwen3_tensors` and `gemma_tensors` fill those gaps. Writing a
preset goes the other way: a Hugging Face folder written by
kerasllm is loaded by keras-hub and saved with `save_to_preset`.

A preset is read whole into memory by keras-hub, and converted whole (two copies of the weights
while importing, the converted one freed tensor by tensor as the model fills); Hugging Face
folders are read tensor by tensor.
"""

import json
from pathlib import Path

import numpy as np

from kerasllm.errors import ConfigError, DataError

# keras-hub backbone class -> (HF model_type, name of its keras-hub export module or None).
BACKBONES = {
    "GPT2Backbone": "gpt2",
    "LlamaBackbone": "llama",
    "Llama3Backbone": "llama",
    "MistralBackbone": "mistral",
    "QwenBackbone": "qwen2",
    "Qwen3Backbone": "qwen3",
    "GemmaBackbone": "gemma",
}


def is_preset_dir(directory):
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    try:
        return "registered_name" in json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False


def backbone_hf_config(backbone):
    """The Hugging Face `config.json` dict of a keras-hub backbone."""
    from keras_hub.src.utils.transformers.export import gemma, gpt2, llama3, mistral, qwen

    name = type(backbone).__name__
    if name not in BACKBONES:
        raise ConfigError(f"keras-hub {name}: not supported; kerasllm imports {', '.join(BACKBONES)}")
    if name == "GPT2Backbone":
        config = gpt2.get_gpt2_config(backbone)
        config["layer_norm_epsilon"] = 1e-5
    elif name in ("LlamaBackbone", "Llama3Backbone"):
        config = llama3.get_llama3_config(backbone)
        config["max_position_embeddings"] = 131072 if backbone.rope_frequency_adjustment_factor else 8192
        if backbone.rope_position_scaling_factor != 1.0:
            config["rope_scaling"] = {"rope_type": "linear", "factor": backbone.rope_position_scaling_factor}
    elif name == "MistralBackbone":
        config = mistral.get_mistral_config(backbone)
    elif name == "QwenBackbone":
        config = dict(qwen.get_qwen_config(backbone), use_sliding_window=backbone.use_sliding_window,
                      sliding_window=backbone.sliding_window_size, attention_bias=True)
    elif name == "GemmaBackbone":
        _check_gemma1(backbone)
        config = dict(gemma.get_gemma_config(backbone), rms_norm_eps=backbone.layer_norm_epsilon,
                      hidden_activation="gelu_pytorch_tanh")
    else:
        config = _qwen3_config(backbone)
    return config


def _check_gemma1(backbone):
    """A GemmaBackbone with Gemma 2's options (kerasllm's GPT has none of them) is refused, naming the first."""
    gemma1 = {"use_post_ffw_norm": False, "use_post_attention_norm": False, "attention_logit_soft_cap": None,
              "final_logit_soft_cap": None, "use_sliding_window_attention": False, "query_head_dim_normalize": True}
    for key, expected in gemma1.items():
        value = getattr(backbone, key, expected)
        if value != expected:
            raise ConfigError(
                f"keras-hub GemmaBackbone: {key} = {value!r} (Gemma 2) is not supported; kerasllm imports Gemma 1 "
                f"({key} = {expected!r})"
            )


def _qwen3_config(backbone):
    return {
        "model_type": "qwen3", "vocab_size": backbone.vocabulary_size, "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers, "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads, "head_dim": backbone.head_dim,
        "intermediate_size": backbone.intermediate_dim, "rms_norm_eps": backbone.layer_norm_epsilon,
        "rope_theta": backbone.rope_max_wavelength, "tie_word_embeddings": backbone.tie_word_embeddings,
        "use_sliding_window": backbone.sliding_window_size is not None,
        "sliding_window": backbone.sliding_window_size, "max_position_embeddings": 40960, "hidden_act": "silu",
    }


def backbone_hf_tensors(backbone):
    """`{hf key: numpy array}` of a keras-hub backbone (keras-hub's exporters; Qwen3 and Gemma here)."""
    from keras_hub.src.utils.transformers.export import gpt2, llama3, mistral, qwen

    name = type(backbone).__name__
    exporters = {"GPT2Backbone": gpt2.get_gpt2_weights_map, "LlamaBackbone": llama3.get_llama3_weights_map,
                 "Llama3Backbone": llama3.get_llama3_weights_map, "MistralBackbone": mistral.get_mistral_weights_map,
                 "QwenBackbone": qwen.get_qwen_weights_map, "Qwen3Backbone": qwen3_tensors,
                 "GemmaBackbone": gemma_tensors}
    tensors = exporters[name](backbone, include_lm_head=True)
    return {key: np.asarray(value, np.float32) for key, value in tensors.items()}


def qwen3_tensors(backbone, include_lm_head=True):
    """Hugging Face Qwen3 tensors of a `keras_hub.models.Qwen3Backbone` (keras-hub has no exporter)."""
    C = backbone.hidden_dim

    def dense(kernel):  # keras-hub EinsumDense (C, heads, D) or (heads, D, C) -> HF (out, in)
        value = np.asarray(kernel.numpy(), np.float32)
        return value.reshape(C, -1).T if value.shape[0] == C else value.reshape(-1, C).T

    tensors = {"model.embed_tokens.weight": backbone.get_layer("token_embedding").embeddings.numpy()}
    for i in range(backbone.num_layers):
        layer = backbone.get_layer(f"transformer_layer_{i}")
        attn, p = layer._self_attention_layer, f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": layer._self_attention_layernorm.scale.numpy(),
            p + "post_attention_layernorm.weight": layer._feedforward_layernorm.scale.numpy(),
            p + "self_attn.q_proj.weight": dense(attn._query_dense.kernel),
            p + "self_attn.k_proj.weight": dense(attn._key_dense.kernel),
            p + "self_attn.v_proj.weight": dense(attn._value_dense.kernel),
            p + "self_attn.o_proj.weight": np.asarray(attn._output_dense.kernel.numpy()).reshape(-1, C).T,
            p + "self_attn.q_norm.weight": attn._query_dense_layer_norm.scale.numpy(),
            p + "self_attn.k_norm.weight": attn._key_dense_layer_norm.scale.numpy(),
            p + "mlp.gate_proj.weight": layer._feedforward_gate_dense.kernel.numpy().T,
            p + "mlp.up_proj.weight": layer._feedforward_intermediate_dense.kernel.numpy().T,
            p + "mlp.down_proj.weight": layer._feedforward_output_dense.kernel.numpy().T,
        })
    tensors["model.norm.weight"] = backbone.get_layer("sequence_output_layernorm").scale.numpy()
    if include_lm_head and not backbone.tie_word_embeddings:
        tensors["lm_head.weight"] = backbone.get_layer("token_embedding").reverse_embeddings.numpy().T
    return tensors


def gemma_tensors(backbone, include_lm_head=True):
    """Hugging Face Gemma tensors of a `keras_hub.models.GemmaBackbone`.

    keras-hub's own Gemma exporter reshapes the query and output kernels correctly only when
    `num_query_heads * head_dim == hidden_dim` (Gemma 2B, not 7B), so this maps them itself.
    """
    C = backbone.hidden_dim

    def numpy(weight):
        return np.asarray(weight.numpy(), np.float32)

    def heads_in(kernel):  # keras-hub (heads, C, D) -> HF (heads * D, C)
        return numpy(kernel).transpose(0, 2, 1).reshape(-1, C)

    embedding = backbone.get_layer("token_embedding")
    tensors = {"model.embed_tokens.weight": numpy(embedding.embeddings)}
    for i in range(backbone.num_layers):
        layer, p = backbone.get_layer(f"decoder_block_{i}"), f"model.layers.{i}."
        attn = layer.attention
        tensors.update({
            p + "input_layernorm.weight": numpy(layer.pre_attention_norm.scale),
            p + "post_attention_layernorm.weight": numpy(layer.pre_ffw_norm.scale),
            p + "self_attn.q_proj.weight": heads_in(attn.query_dense.kernel),
            p + "self_attn.k_proj.weight": heads_in(attn.key_dense.kernel),
            p + "self_attn.v_proj.weight": heads_in(attn.value_dense.kernel),
            p + "self_attn.o_proj.weight": numpy(attn.output_dense.kernel).reshape(-1, C).T,  # (n, D, C) -> (C, n*D)
            p + "mlp.gate_proj.weight": numpy(layer.gating_ffw.kernel).T,
            p + "mlp.up_proj.weight": numpy(layer.gating_ffw_2.kernel).T,
            p + "mlp.down_proj.weight": numpy(layer.ffw_linear.kernel).T,
        })
    tensors["model.norm.weight"] = numpy(backbone.get_layer("final_normalization").scale)
    if include_lm_head and not embedding.tie_weights:
        tensors["lm_head.weight"] = numpy(embedding.reverse_embeddings).T
    return tensors


class InMemoryCheckpoint:
    """`SafetensorsCheckpoint`'s interface over a dict of tensors (a converted preset).

    Each tensor is dropped once the model holds it (`release`), so the load needs the
    converted tensors plus the model, shrinking as one grows, not both in full.
    """

    def __init__(self, tensors, directory):
        from kerasllm.checkpoints.safetensors_io import SafetensorsCheckpoint

        self.directory = Path(directory)
        strip = SafetensorsCheckpoint._strip
        self._tensors = {strip(SafetensorsCheckpoint, key): value for key, value in tensors.items()}
        self._keys = list(self._tensors)

    def keys(self):
        return list(self._keys)

    def __contains__(self, key):
        return key in self._tensors

    def file_of(self, key):
        return self.directory / "model.weights.h5"

    def shape(self, key):
        return tuple(self._tensors[key].shape)

    def get(self, key):
        return self._tensors[key]

    def read_rows(self, key, start=0, stop=None):
        value = self._tensors[key]
        return value[start:stop] if value.ndim else value

    def release(self, key):
        self._tensors.pop(key, None)


def preset_hf_config(directory):
    """The Hugging Face `config.json` dict of a preset's backbone, from its `config.json` alone:
    the backbone is built without values for its variables, so no weights are read or drawn."""
    import keras
    import keras_hub  # noqa: F401 (registers the backbone classes the config names)

    from kerasllm import _keras_compat as compat

    path = Path(directory) / "config.json"
    try:
        with keras.StatelessScope(initialize_variables=False):
            backbone = keras.saving.deserialize_keras_object(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: keras-hub cannot build this backbone: {str(error).splitlines()[0][:200]}") from None
    compat.forget_deferred(backbone.variables)
    return backbone_hf_config(backbone)


def load_preset_backbone(directory):
    import keras_hub

    try:
        return keras_hub.models.Backbone.from_preset(str(directory))
    except (ValueError, KeyError, OSError) as error:
        raise DataError(f"{directory}: keras-hub cannot load this preset: {str(error).splitlines()[0][:200]}") from None


def preset_tokenizer(directory):
    """The preset's tokenizer as a `PretrainedTokenizer` (byte-level BPE or SentencePiece)."""
    import keras_hub

    from kerasllm.tokenizers.pretrained import PretrainedTokenizer, byte_level_tokenizer_json

    assets = Path(directory) / "assets" / "tokenizer"
    if not assets.is_dir() and not (Path(directory) / "tokenizer.json").is_file():
        raise DataError(f"{directory}: no tokenizer in this preset (expected tokenizer.json and assets/tokenizer/)")
    try:
        hub = keras_hub.tokenizers.Tokenizer.from_preset(str(directory))
    except (ValueError, KeyError, OSError, FileNotFoundError) as error:
        raise DataError(f"{directory}: keras-hub cannot load the tokenizer: {str(error).splitlines()[0][:200]}") from None
    roles = {"bos": getattr(hub, "start_token", None), "eos": getattr(hub, "end_token", None),
             "pad": getattr(hub, "pad_token", None)}
    roles = {k: v for k, v in roles.items() if v}
    if isinstance(hub, keras_hub.tokenizers.SentencePieceTokenizer):
        return PretrainedTokenizer(sp_model=hub.proto, roles=roles)
    if isinstance(hub, keras_hub.tokenizers.BytePairTokenizer):
        text = byte_level_tokenizer_json(hub.vocabulary, hub.merges)
        return PretrainedTokenizer(tokenizer_json=text, roles=roles)
    raise DataError(f"{directory}: tokenizer {type(hub).__name__} is not supported; expected byte-level BPE or SentencePiece")


def save_preset(hf_directory, output):
    """Loads a Hugging Face folder (written by kerasllm) with keras-hub and saves it as a preset."""
    import keras_hub

    task = keras_hub.models.CausalLM.from_preset(str(hf_directory))
    task.save_to_preset(str(output))
    return output
