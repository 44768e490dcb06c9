"""Where a pretrained checkpoint comes from: a local folder, `hf://ORG/NAME` or a preset name."""

import json
import os
from pathlib import Path

from kerasllm.errors import DataError

HF_SCHEME = "hf://"
# Only what a causal LM needs: not the .bin/.pt/.h5 twins many repositories also hold.
HF_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
               "special_tokens_map.json"]


def folder_format(directory):
    """"hf" (config.json with model_type), "keras-hub" (config.json with registered_name) or None."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    if "registered_name" in config:
        return "keras-hub"
    if "model_type" in config:
        return "hf"
    return None


def is_keras_hub_preset_name(name):
    if "/" in name or os.sep in name or Path(name).exists():
        return False
    import keras_hub

    return name in keras_hub.models.Backbone.presets


def is_pretrained_source(source):
    """True for `hf://...`, a keras-hub preset name, or a folder in Hugging Face / keras-hub format.

    Examples:

    >>> is_pretrained_source("hf://openai-community/gpt2"), is_pretrained_source("runs/shakespeare")
    (True, False)
    """
    text = str(source)
    if text.startswith(HF_SCHEME):
        return True
    if Path(text).is_dir():
        return folder_format(text) is not None
    return is_keras_hub_preset_name(text)


def resolve(source):
    """`(local folder, format)` of a source, downloading `hf://` and preset names when online.

    Raises:
        DataError: a folder in neither format, an unknown name, or a download that cannot
            happen (offline, or `huggingface_hub` missing), saying which local path to pass.
    """
    text = str(source)
    if text.startswith(HF_SCHEME):
        folder = _hf_download(text[len(HF_SCHEME):].strip("/"))
        return folder, "hf"
    path = Path(text)
    if path.is_dir():
        kind = folder_format(path)
        if kind is None:
            raise DataError(
                f"{path}: neither a Hugging Face checkpoint (config.json with model_type) nor a keras-hub "
                f"preset (config.json with registered_name)"
            )
        return path, kind
    if path.exists():
        raise DataError(f"{path}: expected a checkpoint folder, got a file")
    if is_keras_hub_preset_name(text):
        return _preset_download(text), "keras-hub"
    raise DataError(f"{text}: no such folder, not hf://ORG/NAME and not a keras-hub preset name")


def _hf_download(repo_id):
    try:
        import huggingface_hub
    except ImportError:
        raise DataError(
            f"hf://{repo_id}: downloading needs huggingface_hub (pip install huggingface_hub), or pass the "
            "local folder of a downloaded checkpoint"
        ) from None
    try:  # the cache first: works offline
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=HF_PATTERNS, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (the exception type varies by version)
        pass
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=HF_PATTERNS))
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, gated repo
        raise DataError(
            f"hf://{repo_id}: cannot download ({type(error).__name__}: {str(error).splitlines()[0][:160]}); "
            f"offline, download it elsewhere with `huggingface-cli download {repo_id} --local-dir DIR` and "
            "pass DIR instead"
        ) from None


def _preset_download(name):
    from keras_hub.src.utils.preset_utils import get_file

    try:
        return Path(get_file(name, "config.json")).parent
    except Exception as error:  # noqa: BLE001 - offline (kagglehub), missing credentials
        raise DataError(
            f"{name}: cannot download this keras-hub preset ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160]}); offline, pass the preset's local folder instead "
            "(keras_hub.models.Backbone.from_preset(...).save_to_preset(DIR) where it is available)"
        ) from None
