"""Export for serving: SavedModels with text-in/text-out signatures that need only TensorFlow.

* `LanguageModelServer`: `generate`, `score`, `next_token_logits` (`serving_default` = generate).
* `ClassifierServer`: `classify` (`serving_default` = classify).
* `export_versioned`: writes one in TF Serving's `BASE/<version>/` layout, atomically.
* `build_server`: the right server for a run directory's model.
"""

from kerasllm.export.classifier import ClassifierServer
from kerasllm.export.lm import LanguageModelServer
from kerasllm.export.saving import export_versioned, next_version, save_module

__all__ = [
    "ClassifierServer",
    "LanguageModelServer",
    "export_versioned",
    "next_version",
    "save_module",
]
