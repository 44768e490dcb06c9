"""The SavedModel export of an imported checkpoint reproduces greedy generation exactly in a
process that imports only TensorFlow (and tensorflow-text's kernels for SentencePiece)."""

import json
import os
import subprocess
import sys
import textwrap

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kerasllm.checkpoints import load_pretrained
from kerasllm.export import LanguageModelServer, export_versioned
from kerasllm.export.graph import saved_op_types
from kerasllm.generation import Generator

TEXTS = ["The quick brown fox jumps over the lazy dog.\n", "今天天气很好，我们去公园散步。\n",
         "emoji 🙂🚀 and numbers 12345\n", "hello world, hello kerasllm\n"] * 20
PROMPTS = ["The quick brown", "今天天气", "hello 🙂", ""]
NEW_TOKENS = 12

STANDALONE = textwrap.dedent("""
    import glob, importlib.util, json, os, sys
    import tensorflow as tf
    request = json.load(open(sys.argv[1]))
    if request["text_ops"]:  # tensorflow-text's kernels only: `import tensorflow_text` would import keras
        folder = importlib.util.find_spec("tensorflow_text").submodule_search_locations[0]
        for library in sorted(glob.glob(os.path.join(folder, "python", "ops", "*.so"))):
            tf.load_op_library(library)
    model = tf.saved_model.load(request["path"])
    out = model.signatures["generate"](
        prompt=tf.constant(request["prompts"]), max_new_tokens=tf.constant(request["new"], tf.int32),
        temperature=tf.constant(0.0), top_k=tf.constant(0, tf.int32), top_p=tf.constant(1.0), seed=tf.constant(0, tf.int32))
    forbidden = sorted(m for m in sys.modules if m.split(".")[0] in ("kerasllm", "keras_hub"))
    json.dump({"token_ids": out["token_ids"].numpy().tolist(),
               "text": [t.decode("utf-8", "replace") for t in out["text"].numpy()], "forbidden": forbidden},
              open(sys.argv[2], "w"))
""")


def randomize(model, seed=0):
    """Large random weights: logits far apart, so greedy ties cannot flip on rounding."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if any(part in weight.path for part in ("norm", "gamma", "scale")):
            weight.assign(1 + rng.normal(0, 0.2, weight.shape))
        else:
            weight.assign(rng.normal(0, 0.25, weight.shape))
    return model


def byte_level_tokenizer(vocab_size):
    from kerasllm.tokenizers.pretrained import PretrainedTokenizer

    return PretrainedTokenizer.train(TEXTS, vocab_size=vocab_size)


def gpt2_folder(folder):
    """keras-hub's GPT2Backbone, written by its own `export_to_transformers`, with a byte-level BPE."""
    tokenizer = byte_level_tokenizer(300)
    backbone = randomize(keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=128,
        max_sequence_length=64,
    ))
    keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None).export_to_transformers(str(folder))
    (folder / "tokenizer.json").write_text(tokenizer.tokenizer_json)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return folder


def kerasllm_folder(folder, tokenizer, **options):
    """A kerasllm GPT of a Hugging Face architecture, written with `save_hf`."""
    from kerasllm.checkpoints.writer import save_hf
    from kerasllm.config import ModelConfig
    from kerasllm.models import build_model

    config = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=64, positions="rope", norm="rmsnorm",
                         mlp="swiglu", bias=False, n_kv_head=2, mlp_hidden=64, norm_eps=1e-6, **options)
    model = randomize(build_model(config, vocab_size=tokenizer.vocabulary_size))
    return save_hf(model, tokenizer, folder)


def llama_sentencepiece_folder(folder):
    from kerasllm.tokenizers import SentencePieceTokenizer

    return kerasllm_folder(folder, SentencePieceTokenizer.train(TEXTS, vocab_size=400), tie_embeddings=False)


def qwen3_folder(folder):
    return kerasllm_folder(folder, byte_level_tokenizer(300), qk_norm=True, head_dim=12, tie_embeddings=False)


FOLDERS = {"gpt2": gpt2_folder, "llama-sentencepiece": llama_sentencepiece_folder, "qwen3": qwen3_folder}


@pytest.mark.slow  # 80-135 s each on 2 shared cores: an export trace and a fresh TensorFlow process
@pytest.mark.parametrize("kind", list(FOLDERS))
def test_savedmodel_of_an_imported_checkpoint_generates_the_same_ids_without_kerasllm(kind, tmp_path):
    folder = FOLDERS[kind](tmp_path / kind)
    _, tokenizer, model = load_pretrained(folder)
    assert tokenizer.kind == "pretrained" and (tokenizer.sp_model is not None) == (kind == "llama-sentencepiece")
    rows = [tokenizer.encode(p) for p in PROMPTS]
    out = Generator(model, tokenizer, jit_compile=False).generate(rows, max_new_tokens=NEW_TOKENS, temperature=0)
    expected = np.stack([o[max(len(r), 1):] for o, r in zip(out, rows)])
    texts = [b.decode("utf-8", "replace") for b in tokenizer.tf_decode(tf.constant(expected)).numpy()]
    assert [tokenizer.decode(row) for row in expected] == texts  # Python and graph decoding agree too

    path = export_versioned(LanguageModelServer(model, tokenizer), tmp_path / "export", log=lambda *a: None)
    assert not [op for op in saved_op_types(path) if op.startswith("Xla")]
    text_ops = "tensorflow-text ops" in (path / "README.txt").read_text()  # BPE's regex split and SentencePiece
    request = {"path": str(path), "prompts": PROMPTS, "new": NEW_TOKENS, "text_ops": text_ops}
    (tmp_path / "request.json").write_text(json.dumps(request))
    (tmp_path / "standalone.py").write_text(STANDALONE)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "standalone.py"), str(tmp_path / "request.json"), str(tmp_path / "out.json")],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=""),
        cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["forbidden"] == []
    np.testing.assert_array_equal(got["token_ids"], expected)
    assert got["text"] == texts
