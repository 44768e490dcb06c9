"""kerasllm: train, evaluate and export small language models with Keras 3.

Raw text -> tokenizer -> tf.data windows -> GPT or LSTM -> trained run directory ->
generation, evaluation and SavedModel export.

Importing `kerasllm` (or `kerasllm.config`) loads neither TensorFlow nor Keras; the modules
that need them import them.
"""

import os

# TensorFlow's C++ info and warning logs are noise for a user on a laptop; an explicit
# TF_CPP_MIN_LOG_LEVEL, or KERASLLM_VERBOSE=1, wins. (The lines TensorFlow 2.21 prints while
# it loads ignore this variable: the CLIs drop those, see kerasllm.recipes.cli.)
DEFAULTED_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" not in os.environ and os.environ.get("KERASLLM_VERBOSE", "") in ("", "0")
if DEFAULTED_TF_LOG_LEVEL:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

__version__ = "0.1.0"
