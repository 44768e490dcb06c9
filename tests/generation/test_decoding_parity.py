"""One decoding loop, one sampler: every path returns the same tokens for the same request.

For one (prompt, max_new_tokens, temperature, top_k, top_p, seed): `Generator.generate`,
`Generator.stream`, `python -m kerasllm.recipes.generate`, the pretrain recipe's end-of-run
sample (`sample_text`) and the exported SavedModel's `generate` signature agree, token for
token. A row's tokens depend only on its own prompt, settings and seed (row `i` of an int seed
uses `seed + i`), so a batch, a ragged batch and one row alone agree too.
"""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, run_module
from kerasllm.generation import Generator
from kerasllm.models import GPT, LSTMLanguageModel

PROMPT = "the "
NEW = 12
SETTINGS = {  # name: (temperature, top_k, top_p, seed)
    "sampled": (0.9, 5, 1.0, 1337),
    "nucleus": (1.2, 8, 0.9, 7),
    "greedy": (0.0, 0, 1.0, 0),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny pretrained run directory and its export (TensorFlow only, loaded back)."""
    from kerasllm.config import load_config
    from kerasllm.export import LanguageModelServer, export_versioned
    from kerasllm.training import pretrain

    tmp = tmp_path_factory.mktemp("parity")
    (tmp / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    config = load_config("default", [
        f"data.dataset=\"{tmp / 'corpus.txt'}\"", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
        "model.block_size=32", "train.batch_size=4", "train.max_steps=2", "train.eval_interval=2",
        "train.eval_steps=1", "train.warmup_steps=1", "train.jit_compile=false",
    ])
    model, tokenizer, _ = pretrain(config, tmp / "run", log=lambda *a: None, verbose=0)
    path = export_versioned(LanguageModelServer(model, tokenizer), tmp / "serving", log=lambda *a: None)
    return {"dir": tmp / "run", "config": config, "model": model, "tokenizer": tokenizer,
            "export": tf.saved_model.load(str(path))}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_path_returns_the_same_tokens(run, name):
    from kerasllm.training import sample_text

    temperature, top_k, top_p, seed = SETTINGS[name]
    model, tokenizer = run["model"], run["tokenizer"]
    prompt_ids = tokenizer.encode(PROMPT)
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    generator = Generator(model, tokenizer)

    generated = generator.generate([prompt_ids], NEW, **settings)[0][len(prompt_ids):]
    streamed = np.concatenate(list(generator.stream([prompt_ids], NEW, **settings)))
    np.testing.assert_array_equal(streamed, generated)
    text = tokenizer.decode(generated)
    assert generator.generate(PROMPT, NEW, **settings) == PROMPT + text

    cli = run_module("kerasllm.recipes.generate", "--model", run["dir"], "--prompt", PROMPT,
                     "--max-new-tokens", NEW, "--temperature", temperature, "--top-k", top_k,
                     "--top-p", top_p, "--seed", seed)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stdout == PROMPT + text + "\n"

    exported = run["export"].signatures["generate"](
        prompt=tf.constant([PROMPT]), max_new_tokens=tf.constant(NEW), temperature=tf.constant(float(temperature)),
        top_k=tf.constant(top_k), top_p=tf.constant(float(top_p)), seed=tf.constant(seed),
    )
    np.testing.assert_array_equal(exported["token_ids"].numpy()[0], generated)
    assert exported["text"].numpy()[0].decode() == text

    if top_p == 1.0:  # the end-of-run sample has no top_p setting
        sample = dataclasses.replace(run["config"].sample, prompt=PROMPT, max_new_tokens=NEW,
                                     temperature=temperature, top_k=top_k, seed=seed)
        assert sample_text(model, tokenizer, sample) == PROMPT + text


@pytest.mark.slow
def test_exported_batches_equal_rows_alone(run):
    """A server batching concurrent requests returns what each would get alone."""
    model, tokenizer = run["model"], run["tokenizer"]
    prompts = ["the quick ", "", "over"]
    out = run["export"].signatures["generate"](
        prompt=tf.constant(prompts), max_new_tokens=tf.constant(NEW), temperature=tf.constant(0.9),
        top_k=tf.constant(6), top_p=tf.constant(0.95), seed=tf.constant(40),
    )["token_ids"].numpy()
    generator = Generator(model, tokenizer)
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt)
        alone = generator.generate([ids], NEW, temperature=0.9, top_k=6, top_p=0.95, seed=40 + i)[0]
        np.testing.assert_array_equal(out[i], alone[max(len(ids), 1):])


def tiny(arch):
    import keras

    keras.utils.set_random_seed(3)
    if arch == "lstm":
        model = LSTMLanguageModel(vocab_size=29, block_size=16, n_layer=2, n_embd=16)
    else:
        model = GPT(vocab_size=29, block_size=32, n_layer=1, n_head=2, n_embd=16)
    model.build((None, None))
    return model


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_batch_rows_equal_rows_alone(arch):
    """Ragged rows, per-row settings and seed + i: each row is exactly that row generated alone."""
    generator = Generator(tiny(arch), jit_compile=False)  # the slow tests cover XLA
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]
    temperature, top_k, top_p = [0.8, 0.0, 1.5], [5, 0, 0], [1.0, 1.0, 0.8]
    batch = generator.generate(prompts, 9, temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    for i, prompt in enumerate(prompts):
        alone = generator.generate([prompt], 9, temperature=temperature[i], top_k=top_k[i], top_p=top_p[i], seed=11 + i)
        np.testing.assert_array_equal(batch[i], alone[0])
        streamed = np.concatenate(list(generator.stream(
            [prompt], 9, temperature=temperature[i], top_k=top_k[i], top_p=top_p[i], seed=11 + i)))
        np.testing.assert_array_equal(streamed, alone[0][len(prompt):])
    seeds = generator.generate(prompts, 9, temperature=1.0, seed=[5, 5, 5])  # one seed per row
    np.testing.assert_array_equal(seeds[1], generator.generate([[6]], 9, temperature=1.0, seed=5)[0])


def test_generation_past_the_context_is_the_streamed_text():
    """Past a GPT's context, generate() and stream() slide the same window."""
    generator = Generator(tiny("gpt"), jit_compile=False)
    out = generator.generate([[1, 2, 3]], 45, temperature=1.0, top_k=6, seed=2)[0]  # context 32
    streamed = np.concatenate(list(generator.stream([[1, 2, 3]], 45, temperature=1.0, top_k=6, seed=2)))
    np.testing.assert_array_equal(out[3:], streamed)
    assert len(out) == 48


JAX_SCRIPT = r"""
import numpy as np, keras
assert keras.backend.backend() == "jax"
from kerasllm.generation import Generator
from kerasllm.models import GPT, LSTMLanguageModel
for model in [GPT(vocab_size=29, block_size=32, n_layer=1, n_head=2, n_embd=16),
              LSTMLanguageModel(vocab_size=29, block_size=16, n_layer=1, n_embd=16)]:
    model.build((None, None))
    generator = Generator(model)
    for settings in [dict(temperature=0.9, top_k=5, top_p=0.9, seed=3), dict(temperature=0.0)]:
        batch = generator.generate([[1, 2, 3], [4]], 10, **settings)
        streamed = np.concatenate(list(generator.stream([[1, 2, 3]], 10, **settings)))
        assert (batch[0][3:] == streamed).all(), (batch[0], streamed)
        alone = generator.generate([[4]], 10, **dict(settings, seed=settings.get("seed", 0) + 1))
        assert (batch[1] == alone[0]).all(), (batch[1], alone)
print("ok")
"""


@pytest.mark.slow
def test_generate_and_stream_agree_on_jax(tmp_path):
    pytest.importorskip("jax")
    script = tmp_path / "jax_parity.py"
    script.write_text(JAX_SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("flag, value", [
    ("--top-k", "-3"), ("--temperature", "nan"), ("--temperature", "-0.5"), ("--top-p", "0"), ("--top-p", "1.5"),
])
def test_generate_cli_rejects_bad_sampler_flags(flag, value, tmp_path):
    from kerasllm.errors import ConfigError
    from kerasllm.recipes.generate import main

    with pytest.raises(ConfigError, match=f"^{flag} "):  # before any run directory is read
        main(["--model", str(tmp_path / "nope"), "--prompt", "x", flag, value])


@pytest.mark.slow
def test_no_stream_caps_a_gpt_at_its_context(run):
    cli = run_module("kerasllm.recipes.generate", "--model", run["dir"], "--prompt", PROMPT,
                     "--max-new-tokens", 1000000000, "--no-stream", "--temperature", 0)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "capped at the model's context (32 tokens)" in cli.stderr
    ids = run["tokenizer"].encode(PROMPT)
    capped = Generator(run["model"], run["tokenizer"]).generate([ids], 32, temperature=0)[0][len(ids):]
    assert cli.stdout == PROMPT + run["tokenizer"].decode(capped) + "\n"
