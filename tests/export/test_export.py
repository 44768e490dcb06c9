"""Export for serving: in-graph generate/score/logits/classify, parity with Keras, the CLI, loading
the SavedModel in a process that imports only TensorFlow."""

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_module
from kerasllm.errors import RunError
from kerasllm.export import ClassifierServer, LanguageModelServer, export_versioned, next_version
from kerasllm.export import saving
from kerasllm.export.graph import saved_op_types
from kerasllm.generation import Generator
from kerasllm.models import GPT, LSTMLanguageModel
from kerasllm.tokenizers import CharTokenizer, get_tokenizer_class, tokenizer_kinds

TEXT = (
    "to be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.\n"
)
PROMPTS = ["to be", "the slings and", "", "whether 'tis nobler in the mind"]


def sharpen(model, scale=8.0):
    """Scales the matrices so logits are far apart: greedy ties cannot flip on rounding."""
    for variable in model.trainable_variables:
        if len(variable.shape) > 1:
            variable.assign(variable.numpy() * scale)
    return model


def tiny_lm(arch, vocab_size, block_size=24, **kwargs):
    keras.utils.set_random_seed(1)
    if arch == "lstm":
        model = LSTMLanguageModel(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_embd=16, **kwargs)
    else:
        model = GPT(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16, **kwargs)
    model.build((None, None))
    return sharpen(model)


def python_generate(model, tokenizer, prompts, new, jit_compile=False):
    """The in-Python cached generator's greedy continuations (ids only), prompts cut to fit a
    GPT's context as the export documents (the Python generator slides its window instead)."""
    rows = [tokenizer.encode(p) for p in prompts]
    if isinstance(model, GPT):
        rows = [r[-(model.block_size - new):] for r in rows]
    out = Generator(model, tokenizer, jit_compile=jit_compile).generate(rows, max_new_tokens=new, temperature=0)
    return np.stack([o[max(len(r), 1):] for o, r in zip(out, rows)])


def reference_score(model, tokenizer, text, block_size, stride=None):
    """The evaluate recipe's sliding-window loss over <eos> + text, as a log-likelihood."""
    from kerasllm.training.metrics import language_model_loss

    ids = np.concatenate([[tokenizer.eos_id], tokenizer.encode(text)]).astype(np.int32)
    loss, count = language_model_loss(model, ids, block_size, stride=stride)
    return -loss * count, count


@pytest.fixture(scope="module")
def char_tokenizer():
    return CharTokenizer.train([TEXT])


# --- language models, in process --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("arch, options", [
    ("gpt", {}),
    ("gpt", {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1, "bias": False}),
    ("lstm", {}),
])
def test_lm_server_matches_keras(arch, options, char_tokenizer):
    tok = char_tokenizer
    model = tiny_lm(arch, tok.vocabulary_size, **options)
    server = LanguageModelServer(model, tok, max_new_tokens=64)

    out = server.generate(tf.constant(PROMPTS), 9, 0.0, 0, 1.0, 0)
    expected = python_generate(model, tok, PROMPTS, 9)
    np.testing.assert_array_equal(out["token_ids"].numpy(), expected)
    assert [t.decode() for t in out["text"].numpy()] == [tok.decode(row) for row in expected]
    fits = model.block_size - 9 if arch == "gpt" else 10**9
    assert out["prompt_tokens"].numpy().tolist() == [min(len(tok.encode(p)), fits) for p in PROMPTS]

    ids = np.array([tok.encode("or not to be, th")], np.int32)
    logits = server.next_token_logits(tf.constant(ids))["logits"].numpy()
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(model(ids))[:, -1], atol=1e-5)

    texts = [TEXT, "t", "", TEXT[:24], TEXT[:25]]
    scores = server.score(tf.constant(texts))
    for i, text in enumerate(texts):
        if not text:
            assert scores["token_count"][i] == 0 and scores["perplexity"][i] == 1.0
            continue
        log_likelihood, count = reference_score(model, tok, text, model.block_size)
        assert scores["token_count"][i] == count == len(tok.encode(text))
        assert abs(scores["log_likelihood"][i].numpy() - log_likelihood) <= 1e-4 * max(1, abs(log_likelihood))
        assert math.isclose(scores["perplexity"][i].numpy(), math.exp(-log_likelihood / count), rel_tol=1e-4)

    sampled = [server.generate(tf.constant(PROMPTS), 12, 0.9, 10, 0.95, seed)["token_ids"].numpy() for seed in (3, 3, 4)]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    assert (sampled[0] != sampled[2]).any()


@pytest.mark.slow
def test_context_limits_and_bad_inputs(char_tokenizer):
    tok = char_tokenizer
    model = tiny_lm("gpt", tok.vocabulary_size, block_size=16)
    server = LanguageModelServer(model, tok, max_new_tokens=100)
    long_prompt = TEXT[:40]
    # Capped at block_size - 1 new tokens; the prompt keeps its last block_size - new tokens.
    out = server.generate(tf.constant([long_prompt]), 1000, 0.0, 0, 1.0, 0)
    assert out["token_ids"].shape == (1, 15) and out["prompt_tokens"].numpy().tolist() == [1]
    out = server.generate(tf.constant([long_prompt]), 6, 0.0, 0, 1.0, 0)
    np.testing.assert_array_equal(out["token_ids"].numpy(), python_generate(model, tok, [long_prompt[-10:]], 6))
    assert server.generate(tf.constant([""]), 0, 0.0, 0, 1.0, 0)["text"].numpy().tolist() == [b""]
    empty = server.generate(tf.zeros([0], tf.string), 4, 0.8, 5, 0.9, 1)  # as score and classify do
    assert empty["token_ids"].shape == (0, 4) and empty["text"].shape == (0,) and empty["prompt_tokens"].shape == (0,)
    window = np.array([tok.encode(long_prompt)], np.int32)
    np.testing.assert_allclose(
        server.next_token_logits(tf.constant(window))["logits"].numpy(),
        keras.ops.convert_to_numpy(model(window[:, -16:]))[:, -1], atol=1e-5,
    )

    bad = [
        (lambda: server.generate(tf.constant(["to"]), -1, 0.0, 0, 1.0, 0), "max_new_tokens must be >= 0"),
        (lambda: server.generate(tf.constant(["to"]), 3, -1.0, 0, 1.0, 0), "temperature must be a finite number >= 0"),
        (lambda: server.generate(tf.constant(["to"]), 3, float("nan"), 0, 1.0, 0), "temperature must be a finite"),
        (lambda: server.generate(tf.constant(["to"]), 3, 1.0, -3, 1.0, 0), "top_k must be >= 0"),
        (lambda: server.generate(tf.constant(["to"]), 3, 1.0, 0, 0.0, 0), "top_p must be in (0, 1]"),
        (lambda: server.generate(tf.constant(["to"]), 3, 1.0, 0, 1.5, 0), "top_p must be in (0, 1]"),
        (lambda: server.next_token_logits(tf.constant([[1, 999]])), "token ids must be < vocab_size"),
        (lambda: server.next_token_logits(tf.constant([[-1]])), "token ids must be >= 0"),
        (lambda: server.next_token_logits(tf.zeros([1, 0], tf.int32)), "needs at least one token"),
    ]
    strict = LanguageModelServer(model, tok, truncate="error")
    bad.append((lambda: strict.generate(tf.constant([long_prompt]), 4, 0.0, 0, 1.0, 0), "prompt too long"))
    for call, message in bad:
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            call()


def test_interrupted_export_leaves_no_version_dir(tmp_path, char_tokenizer, monkeypatch):
    server = LanguageModelServer(tiny_lm("lstm", char_tokenizer.vocabulary_size), char_tokenizer)

    def interrupted(server, export_dir):  # dies half-way through writing the SavedModel
        (export_dir / "saved_model.pb").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(saving, "save_module", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_versioned(server, tmp_path / "m")
    assert list((tmp_path / "m").iterdir()) == []
    assert next_version(tmp_path / "m") == 1
    (tmp_path / "m" / "1").mkdir()
    (tmp_path / "m" / "7").mkdir()
    (tmp_path / "m" / ".tmp-8-x").mkdir()
    assert next_version(tmp_path / "m") == 8


def test_concurrent_export_of_one_version_is_one_error_not_an_oserror(tmp_path, char_tokenizer, monkeypatch):
    server = LanguageModelServer(tiny_lm("lstm", char_tokenizer.vocabulary_size), char_tokenizer)

    def racing(server, export_dir):  # another export finishes version 1 while this one writes
        (export_dir.parent / "1").mkdir()
        (export_dir.parent / "1" / "saved_model.pb").write_bytes(b"theirs")

    monkeypatch.setattr(saving, "save_module", racing)
    monkeypatch.setattr(saving, "write_readme", lambda *a: None)
    with pytest.raises(RunError, match=r"1: written by another export meanwhile"):
        export_versioned(server, tmp_path / "m", log=lambda *a: None)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]
    assert (tmp_path / "m" / "1" / "saved_model.pb").read_bytes() == b"theirs"
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(RunError, match=str(regular)):
        export_versioned(server, regular, log=lambda *a: None)


# --- the standalone load ------------------------------------------------------------------------
STANDALONE = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf
    requests = json.load(open(sys.argv[1]))
    if any(r["text_ops"] for r in requests):
        # tensorflow-text's kernels only: `import tensorflow_text` would also import keras.
        import glob, importlib.util
        folder = importlib.util.find_spec("tensorflow_text").submodule_search_locations[0]
        for library in sorted(glob.glob(os.path.join(folder, "python", "ops", "*.so"))):
            tf.load_op_library(library)
    results = []
    for request in requests:
        model = tf.saved_model.load(request["path"])
        outputs = {}
        for name, kwargs in request["calls"]:
            args = {k: tf.constant(v, dtype=tf.as_dtype(d)) for k, (v, d) in kwargs.items()}
            out = model.signatures[name](**args)
            outputs[name] = {
                k: [b.decode("utf-8", "replace") for b in v.numpy()] if v.dtype == tf.string else v.numpy().tolist()
                for k, v in out.items()
            }
        results.append({"signatures": sorted(model.signatures.keys()), "outputs": outputs})
    # `import tensorflow` itself imports keras 3 when it is installed (TF >= 2.16), so only
    # kerasllm and keras-hub can be checked for absence here.
    forbidden = sorted(m for m in sys.modules if m.split(".")[0] in ("kerasllm", "keras_hub"))
    json.dump({"results": results, "forbidden": forbidden}, open(sys.argv[2], "w"))
""")


def lm_calls(prompts, texts, ids):
    return [
        ["generate", {"prompt": [prompts, "string"], "max_new_tokens": [8, "int32"], "temperature": [0.0, "float32"],
                      "top_k": [0, "int32"], "top_p": [1.0, "float32"], "seed": [0, "int32"]}],
        ["serving_default", {"prompt": [prompts, "string"], "max_new_tokens": [8, "int32"],
                             "temperature": [0.8, "float32"], "top_k": [5, "int32"], "top_p": [0.9, "float32"],
                             "seed": [7, "int32"]}],
        ["score", {"text": [texts, "string"]}],
        ["next_token_logits", {"token_ids": [ids, "int32"]}],
    ]


def run_standalone(tmp_path, requests):
    for request in requests:
        request["text_ops"] = "tensorflow-text ops" in (tmp_path / request["path"] / "README.txt").read_text()
        request["path"] = str(tmp_path / request["path"])
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    (tmp_path / "standalone.py").write_text(STANDALONE)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, str(tmp_path / "standalone.py"), str(tmp_path / "requests.json"), str(tmp_path / "out.json")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((tmp_path / "out.json").read_text())
    assert payload["forbidden"] == []
    return payload["results"]


@pytest.mark.slow
def test_every_model_and_tokenizer_kind_runs_without_kerasllm(tmp_path, char_tokenizer):
    """Each tokenizer kind (GPT), the LSTM and a classifier: export, load with TF only, compare."""
    cases = []
    for kind in tokenizer_kinds():
        tok = char_tokenizer if kind == "char" else get_tokenizer_class(kind).train([TEXT] * 4)
        cases.append((f"gpt-{kind}", tok, tiny_lm("gpt", tok.vocabulary_size)))
    cases.append(("lstm-char", char_tokenizer, tiny_lm("lstm", char_tokenizer.vocabulary_size)))

    requests, expected = [], []
    texts = [TEXT, "be", ""]
    for name, tok, model in cases:
        tokens = python_generate(model, tok, PROMPTS, 8, jit_compile=name == "gpt-char")
        # The graph's text is the tokenizer's in-graph decode of those ids (its agreement with the
        # Python-side decode is the tokenizer tests' business); computed before any tracing.
        decoded = [b.decode("utf-8", "replace") for b in tok.tf_decode(tf.constant(tokens)).numpy()]
        path = export_versioned(LanguageModelServer(model, tok), tmp_path / name, log=lambda *a: None)
        assert not [op for op in saved_op_types(path) if op.startswith("Xla")]
        ids = [tok.encode("to be or")[-3:].tolist()]
        requests.append({"path": f"{name}/1", "calls": lm_calls(PROMPTS, texts, ids)})
        expected.append({
            "tokens": tokens,
            "text": decoded,
            "logits": keras.ops.convert_to_numpy(model(np.array(ids)))[:, -1],
            "score": [reference_score(model, tok, t, model.block_size) if t else (0.0, 0) for t in texts],
            "decode": tok,
        })

    classifier = pytest.importorskip("kerasllm.models.classifier")
    backbone = tiny_lm("gpt", char_tokenizer.vocabulary_size)
    model = classifier.SequenceClassifier(backbone, num_classes=3, labels=["neg", "neu", "pos"], add_dense=1)
    model.build((None, None))
    sharpen(model, 3.0)
    export_versioned(ClassifierServer(model, char_tokenizer, max_length=20), tmp_path / "clf", log=lambda *a: None)
    clf_texts = ["to be", "", TEXT]
    requests.append({"path": "clf/1", "calls": [["classify", {"text": [clf_texts, "string"]}]]})

    results = run_standalone(tmp_path, requests)
    for (name, tok, _), want, got in zip(cases, expected, results):
        assert got["signatures"] == ["generate", "next_token_logits", "score", "serving_default"], name
        out = got["outputs"]
        np.testing.assert_array_equal(out["generate"]["token_ids"], want["tokens"], err_msg=name)
        assert out["generate"]["text"] == want["text"], name
        assert np.asarray(out["serving_default"]["token_ids"]).shape == (len(PROMPTS), 8)
        np.testing.assert_allclose(out["next_token_logits"]["logits"], want["logits"], atol=1e-5, err_msg=name)
        for i, (log_likelihood, count) in enumerate(want["score"]):
            assert out["score"]["token_count"][i] == count, name
            assert abs(out["score"]["log_likelihood"][i] - log_likelihood) <= 1e-4 * max(1, abs(log_likelihood)), name

    clf = results[-1]
    assert clf["signatures"] == ["classify", "serving_default"]
    from kerasllm.training.finetune import encode_texts

    logits = keras.ops.convert_to_numpy(model(encode_texts(char_tokenizer, clf_texts, 20)))
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    np.testing.assert_allclose(clf["outputs"]["classify"]["probabilities"], probabilities, atol=1e-5)
    assert clf["outputs"]["classify"]["label"] == [model.labels[i] for i in probabilities.argmax(-1)]


# --- the command line ---------------------------------------------------------------------------
@pytest.mark.slow
def test_export_cli_on_a_pretrain_run(tmp_path, tiny_overrides):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 20)
    run = tmp_path / "run"
    sets = [arg for item in tiny_overrides for arg in ("--set", item)]
    result = run_module("kerasllm.recipes.pretrain", "--data", corpus, "--output", run, "--no-sample", *sets)
    assert result.returncode == 0, result.stderr[-3000:]

    base = tmp_path / "serving" / "tiny"
    for version in ("1", "2"):
        result = run_module("kerasllm.recipes.export", "--model", run, "--output", base,
                            "--set", "export.max_new_tokens=8")
        assert result.returncode == 0, result.stderr[-3000:]
        assert (base / version / "saved_model.pb").is_file() and (base / version / "variables").is_dir()
    readme = (base / "1" / "README.txt").read_text()
    for line in ["signature 'generate'", "input  prompt           string   [batch]",
                 "output perplexity       float32  [batch]", "signature 'next_token_logits'",
                 "max_new_tokens is capped at min(8, block_size - 1)"]:
        assert line in readme, readme
    # The README's own Python example runs (it once passed top_p=0.0, which the graph rejects).
    example = next(line for line in readme.splitlines() if line.startswith("Python: "))[len("Python: "):]
    namespace = {"tf": tf, "PATH": str(base / "1")}
    exec(example.replace("m.signatures", "out = m.signatures"), namespace)
    assert namespace["out"]["token_ids"].shape[0] == 1

    again = run_module("kerasllm.recipes.export", "--model", run, "--output", base, "--version", "2")
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = run_module("kerasllm.recipes.export", "--model", tmp_path / "nope")
    assert missing.returncode == 2 and "no such run directory" in missing.stderr
    bad = run_module("kerasllm.recipes.export", "--model", run, "--output", base, "--set", "export.truncate=maybe")
    assert bad.returncode == 2 and "export.truncate" in bad.stderr

    cli = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--all", "--dir", str(base / "1")],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    for name in ["serving_default", "generate", "score", "next_token_logits"]:
        assert f"signature_def['{name}']" in cli.stdout
    assert "inputs['max_new_tokens'] tensor_info" in cli.stdout

    # The run's model reloads in safe mode (its classes are registered) and matches the export.
    model = keras.models.load_model(run / "model.keras", safe_mode=True, compile=False)
    ids = np.array([[5, 6, 7]], np.int32)
    loaded = tf.saved_model.load(str(base / "2"))
    np.testing.assert_allclose(
        loaded.signatures["next_token_logits"](token_ids=tf.constant(ids))["logits"].numpy(),
        keras.ops.convert_to_numpy(model(ids))[:, -1], atol=1e-5,
    )


def test_keras_files_reload_in_safe_mode(tmp_path):
    models = [tiny_lm("gpt", 30, positions="rope", mlp="swiglu", n_kv_head=1), tiny_lm("lstm", 30)]
    classifier = pytest.importorskip("kerasllm.models.classifier")
    models.append(classifier.SequenceClassifier(tiny_lm("gpt", 30), num_classes=2, labels=["a", "b"]))
    ids = np.array([[1, 2, 3, 4]], np.int32)
    for i, model in enumerate(models):
        model(ids)  # builds every layer, so every weight is saved
        path = tmp_path / f"m{i}.keras"
        model.save(path)
        loaded = keras.models.load_model(path, safe_mode=True, compile=False)
        assert type(loaded) is type(model)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(loaded(ids)), keras.ops.convert_to_numpy(model(ids)), atol=1e-6
        )


@pytest.mark.slow
def test_docstring_examples_run():
    import doctest

    from kerasllm.export import classifier, lm

    for module in (lm, classifier):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0, module.__name__
