"""kerasllm: train, evaluate and export small language models with Keras 3.

Raw text -> tokenizer -> tf.data windows -> GPT or LSTM -> trained run directory ->
generation, evaluation and SavedModel export.
"""

import os

# TensorFlow's C++ start-up banner (oneDNN, CUDA stubs) is noise for a user on a laptop;
# an explicit TF_CPP_MIN_LOG_LEVEL from the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
