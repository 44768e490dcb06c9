"""The OpenAI-compatible server: the real `openai` client against a server on a free loopback port."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from conftest import REPO_ROOT, run_module

KEY = "test-key"
TINY_RUN = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "train.batch_size=8", "train.max_steps=60", "train.eval_interval=30", "train.eval_steps=2",
    "train.warmup_steps=5", "train.learning_rate=1e-2", "train.jit_compile=false", "sample.max_new_tokens=5",
]
pytestmark = pytest.mark.slow  # one tiny training run, then XLA compiles of the decoding loop: minutes

TEXT = "the quick brown fox jumps over the lazy dog. "


def tiny_run(tmp_path_factory):
    """One tiny trained run per test session (shared by the serve and browser tests)."""
    out = tmp_path_factory.getbasetemp() / "serve_run"
    if not (out / "model.keras").is_file():
        corpus = tmp_path_factory.getbasetemp() / "serve_corpus.txt"
        corpus.write_text(TEXT * 80)
        sets = [arg for item in TINY_RUN for arg in ("--set", item)]
        result = run_module("kerasllm.recipes.pretrain", "--data", corpus, "--output", out, "--no-sample", *sets)
        assert result.returncode == 0, result.stderr[-3000:]
    return out


class LiveServer:
    """`create_app(...)` under uvicorn in a thread, on a free 127.0.0.1 port; `stop()` ends it."""

    def __init__(self, served, **options):
        import uvicorn

        from kerasllm.serving.app import create_app

        self.app = create_app(served, **options)
        self.state = self.app.state.server
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
        assert not self.thread.is_alive()


def post(url, body, key=KEY, raw=None, headers=None):
    """`(status, parsed JSON or text)` of a POST; `raw` bytes replace the JSON body."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json",
                                                                             **(headers or {})})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        text, status = error.read().decode(), error.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(run_dir):
    from kerasllm.training import load_run

    return load_run(run_dir)


@pytest.fixture(scope="module")
def server(run_dir):
    from kerasllm.serving import ServedModel

    live = LiveServer(ServedModel.load(run_dir), api_key=KEY, max_batch=8, max_queue=16, chunk_tokens=8,
                      max_body_bytes=32 * 1024)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def name(server):
    return server.state.served.name


@pytest.fixture(scope="module")
def greedy(loaded):
    """The text `Generator.generate` continues a prompt with, greedily (stopping at <eos>)."""
    from kerasllm.generation import Generator

    _, tokenizer, model = loaded
    generator = Generator(model, tokenizer)

    def continuation(prompt, max_tokens, **sampling):
        ids = tokenizer.encode(prompt)
        out = generator.generate([ids], max_new_tokens=max_tokens, stop_ids=(tokenizer.eos_id,),
                                 **{"temperature": 0, **sampling})
        new = [int(i) for i in out[0][len(ids):] if i != tokenizer.eos_id]
        return tokenizer.decode(new)

    return continuation


# --- completions --------------------------------------------------------------------------
def test_models_and_health(server, client, name):
    assert [m.id for m in client.models.list().data] == [name]
    assert client.models.retrieve(name).id == name
    with urllib.request.urlopen(server.url + "/health") as response:
        health = json.load(response)
    assert health["status"] == "ok" and health["kind"] == "language_model" and health["api_key"]


def test_greedy_completion_equals_generate(client, name, greedy):
    result = client.completions.create(model=name, prompt="the quick", max_tokens=20, temperature=0)
    expected = greedy("the quick", 20)
    assert result.choices[0].text == expected and len(expected) > 0
    assert result.choices[0].finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (9, 20)


def test_concurrent_requests_share_a_decoding_call(server, client, name, greedy):
    prompts = ["the", "the quick brown", "a lazy", "jumps over the", "dog. the", "fox"]
    results = {}
    scheduler = server.state.scheduler
    before = dict(scheduler.stats)
    with server.state.lock:  # hold the model so that every request queues, then let them go at once
        threads = [threading.Thread(target=lambda p=p: results.__setitem__(p, client.completions.create(
            model=name, prompt=p, max_tokens=8, temperature=0))) for p in prompts]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while scheduler.load() < len(prompts) and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(120)
    assert {p: r.choices[0].text for p, r in results.items()} == {p: greedy(p, 8) for p in prompts}
    assert scheduler.stats["rows"] - before.get("rows", 0) == len(prompts)
    assert scheduler.stats["calls"] - before.get("calls", 0) <= 2  # the first request, then the other five


def test_seeded_requests_with_different_settings_share_a_call(server, client, name, greedy):
    # Per-row settings and seeds: each row's text is the one it gets alone, in one shared call.
    settings = [{"temperature": t, "top_k": k, "seed": seed}
                for t, k, seed in [(0.7, 5, 1), (1.0, 0, 2), (1.3, 10, 3), (0.0, 0, 4)]]
    results = {}
    scheduler = server.state.scheduler
    before = dict(scheduler.stats)
    with server.state.lock:
        threads = [threading.Thread(target=lambda i=i, s=s: results.__setitem__(i, client.completions.create(
            model=name, prompt="the", max_tokens=12, temperature=s["temperature"], seed=s["seed"],
            extra_body={"top_k": s["top_k"]}))) for i, s in enumerate(settings)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while scheduler.load() < len(settings) and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(120)
    assert [results[i].choices[0].text for i in range(len(settings))] == [greedy("the", 12, **s) for s in settings]
    assert scheduler.stats["calls"] - before.get("calls", 0) <= 2  # the first request, then the other three


def test_a_list_of_prompts_and_n(client, name, greedy):
    result = client.completions.create(model=name, prompt=["the", "over the lazy"], max_tokens=8, temperature=0)
    assert [c.text for c in result.choices] == [greedy("the", 8), greedy("over the lazy", 8)]
    assert [c.index for c in result.choices] == [0, 1]
    sampled = client.completions.create(model=name, prompt="the", max_tokens=8, n=3, temperature=1.0, seed=7)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert sampled.usage.completion_tokens == 24


def test_seeded_sampling_repeats_and_equals_generate(client, name, greedy):
    settings = {"temperature": 0.9, "top_k": 5, "top_p": 0.9, "seed": 123}
    first, again = (client.completions.create(model=name, prompt="the", max_tokens=16, temperature=0.9, top_p=0.9,
                                              seed=123, extra_body={"top_k": 5}) for _ in range(2))
    assert first.choices[0].text == again.choices[0].text == greedy("the", 16, **settings)


def test_stop_strings_cut_the_text(client, name, greedy):
    full = greedy("the quick", 20)
    stop = full[5:7]
    result = client.completions.create(model=name, prompt="the quick", max_tokens=20, temperature=0, stop=[stop, "never"])
    assert result.choices[0].text == full[: full.index(stop)]
    assert result.choices[0].finish_reason == "stop"


def test_streaming_completion(server, client, name, greedy):
    pieces = [c.choices[0].text for c in client.completions.create(
        model=name, prompt="the quick", max_tokens=20, temperature=0, stream=True)]
    assert "".join(pieces) == greedy("the quick", 20)
    status, text = post(server.url + "/v1/completions", {"prompt": "the", "max_tokens": 28, "temperature": 0,
                                                          "stream": True})
    events = [e for e in text.split("\n\n") if e]
    assert status == 200 and all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len(chunks) >= 4  # 28 tokens in chunks of 8: streamed, not one block
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks) == greedy("the", 28)


def test_chat_and_streaming_chat(client, name, loaded):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the quick"}]
    result = client.chat.completions.create(model=name, messages=messages, max_tokens=12, temperature=0)
    message = result.choices[0].message
    assert message.role == "assistant" and result.choices[0].finish_reason in ("length", "stop")
    _, tokenizer, _ = loaded
    assert result.usage.prompt_tokens == len(tokenizer.encode("System: be brief\nUser: the quick\nAssistant:"))
    chunks = list(client.chat.completions.create(model=name, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == result.choices[0].finish_reason


# --- log-probabilities ----------------------------------------------------------------------
def test_echo_logprobs_equal_evaluate(client, name, loaded):
    from keras import ops

    from kerasllm.training.metrics import language_model_loss

    config, tokenizer, model = loaded
    text = (TEXT * 3)[:100]  # longer than the context (32): several sliding windows
    result = client.completions.create(model=name, prompt=text, max_tokens=0, echo=True, logprobs=1)
    logprobs = result.choices[0].logprobs
    assert result.choices[0].text == text and "".join(logprobs.tokens) == text
    assert logprobs.token_logprobs[0] is None and logprobs.text_offset[:3] == [0, 1, 2]
    scores = np.array(logprobs.token_logprobs[1:])
    loss, scored = language_model_loss(model, tokenizer.encode(text), config.model.block_size)
    assert scored == len(scores) and abs(-scores.mean() - loss) < 1e-4
    # Within one window, each token's log-probability is the model's log-softmax at it.
    ids = tokenizer.encode(text)[:20]
    short = client.completions.create(model=name, prompt=text[:20], max_tokens=0, echo=True, logprobs=1)
    direct = ops.convert_to_numpy(ops.log_softmax(model(np.array([ids[:-1]])), axis=-1))[0]
    expected = direct[np.arange(len(ids) - 1), ids[1:]]
    np.testing.assert_allclose(short.choices[0].logprobs.token_logprobs[1:], expected, atol=1e-4)


def test_logprobs_of_greedy_tokens_are_the_top_ones(client, name):
    result = client.completions.create(model=name, prompt="the quick", max_tokens=8, temperature=0, logprobs=3)
    logprobs = result.choices[0].logprobs
    assert "".join(logprobs.tokens) == result.choices[0].text
    assert logprobs.text_offset[0] == len("the quick")
    for token, lp, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        best = max(top, key=top.get)
        assert len(top) == 3 and best == token and math.isclose(top[best], lp, abs_tol=1e-6)
    chat = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "the"}], max_tokens=5,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(t.top_logprobs[0].token == t.token for t in content)


def test_streamed_logprobs_equal_the_answers(client, name):
    """stream=true with logprobs: each chunk carries its tokens' log-probabilities (OpenAI's chunk format)."""
    whole = client.completions.create(model=name, prompt="the quick", max_tokens=20, temperature=0, logprobs=2)
    chunks = list(client.completions.create(model=name, prompt="the quick", max_tokens=20, temperature=0, logprobs=2,
                                            stream=True))
    scored = [c.choices[0].logprobs for c in chunks if c.choices[0].text]
    assert len(scored) >= 2 and all(lp is not None for lp in scored)  # chunks of 8 tokens, each with its own
    for c in chunks:
        if c.choices[0].logprobs is not None:
            assert "".join(c.choices[0].logprobs.tokens) == c.choices[0].text
    expected = whole.choices[0].logprobs
    assert sum((lp.tokens for lp in scored), []) == expected.tokens
    assert sum((lp.text_offset for lp in scored), []) == expected.text_offset
    np.testing.assert_allclose(sum((lp.token_logprobs for lp in scored), []), expected.token_logprobs, atol=1e-5)
    assert [max(t, key=t.get) for lp in scored for t in lp.top_logprobs] == expected.tokens

    messages = [{"role": "user", "content": "the"}]
    chat = client.chat.completions.create(model=name, messages=messages, max_tokens=10, temperature=0, logprobs=True,
                                          top_logprobs=2)
    streamed = list(client.chat.completions.create(model=name, messages=messages, max_tokens=10, temperature=0,
                                                   logprobs=True, top_logprobs=2, stream=True))
    content = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in content] == [t.token for t in chat.choices[0].logprobs.content]
    np.testing.assert_allclose([t.logprob for t in content], [t.logprob for t in chat.choices[0].logprobs.content],
                               atol=1e-5)
    assert "".join(t.token for t in content) == chat.choices[0].message.content


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, param, says", [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object"),
    ({"prompt": "the", "max_tokens": "5"}, 400, "max_tokens", "valid integer"),
    ({"prompt": 3}, 400, "prompt", "prompt"),
    ({"prompt": "the", "temperature": -1}, 400, "temperature", "greater than or equal to 0"),
    ({"prompt": "the", "top_p": 1.5}, 400, "top_p", "less than or equal to 1"),
    ({"prompt": "the", "logprobs": 9}, 400, "logprobs", "less than or equal to 5"),
    ({"prompt": "the", "presence_penalty": 0.5}, 400, "presence_penalty", "0"),
    ({"prompt": "the", "best_of": 3}, 400, "best_of", "1"),
    ({"prompt": "the", "temprature": 0.5}, 400, "temprature", "Unrecognized request argument"),
    ({"prompt": "the", "max_tokens": 32}, 400, "max_tokens", "over this server's cap of 31"),
    ({"prompt": [[1, 2, 100000]]}, 400, "prompt", "outside the vocabulary"),
    ({"prompt": "the", "model": "gpt-4"}, 404, "model", "does not exist"),
])
def test_bad_requests_get_openai_errors(server, client, name, greedy, body, status, param, says):
    raw = body if isinstance(body, bytes) else None
    code, answer = post(server.url + "/v1/completions", body, raw=raw)
    assert code == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert says in error["message"] and "\n" not in error["message"]
    # None of them hurts the server.
    assert client.completions.create(model=name, prompt="the", max_tokens=5, temperature=0).choices[0].text == \
        greedy("the", 5)


def test_api_key_is_required(server, name):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.completions.create(model=name, prompt="the", max_tokens=2)
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    status, answer = post(server.url + "/v1/completions", {"prompt": "the"}, key=None)
    assert status == 401 and "Missing API key" in answer["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(server.url + "/v1/models")
    assert caught.value.code == 401
    for path in ("/health", "/"):  # health and the page stay open (the page asks for the key)
        with urllib.request.urlopen(server.url + path) as response:
            assert response.status == 200


def test_unknown_model_and_route_are_404(server, client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="no-such-model", prompt="the", max_tokens=2)
    assert caught.value.body["code"] == "model_not_found"
    status, answer = post(server.url + "/v1/embeddings", {"input": "x"})
    assert status == 404 and answer["error"]["code"] == "not_found"


def test_big_bodies_get_413(server):
    status, answer = post(server.url + "/v1/completions", {"prompt": "x" * 40_000})
    assert status == 413 and answer["error"]["code"] == "request_too_large"


def test_long_prompts_are_left_truncated(client, name, greedy):
    prompt = TEXT * 3  # 135 characters, context 32
    result = client.completions.create(model=name, prompt=prompt, max_tokens=10, temperature=0)
    assert result.choices[0].text == greedy(prompt[-22:], 10)  # the last 32 - 10 tokens


def test_classify_needs_a_classifier(server):
    status, answer = post(server.url + "/v1/classify", {"input": ["the"]})
    assert status == 400 and answer["error"]["code"] == "wrong_model_kind"


@pytest.fixture(scope="module")
def strict_server(run_dir):
    """No API key, `export.truncate = "error"`, and room for only two queued sequences."""
    from kerasllm.serving import ServedModel

    live = LiveServer(ServedModel.load(run_dir, ["export.truncate=error"]), max_queue=2)
    yield live
    live.stop()


def test_truncate_error_rejects_long_prompts(strict_server):
    status, answer = post(strict_server.url + "/v1/completions", {"prompt": TEXT, "max_tokens": 10}, key=None)
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"
    assert "at most 22" in answer["error"]["message"]


def test_a_full_queue_answers_429(strict_server):
    state, url = strict_server.state, strict_server.url
    answers = []
    with state.lock:  # the model is busy: two requests fill the queue
        threads = [threading.Thread(target=lambda: answers.append(post(url + "/v1/completions", {
            "prompt": "the", "max_tokens": 4, "temperature": 0}, key=None))) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while state.scheduler.load() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, answer = post(url + "/v1/completions", {"prompt": "the", "max_tokens": 4}, key=None)
        assert status == 429 and answer["error"]["code"] == "queue_full"
    for t in threads:
        t.join(120)
    assert [s for s, _ in answers] == [200, 200]  # the queued ones still finish


# --- a classifier ----------------------------------------------------------------------------
def test_classify_matches_the_savedmodel_signature(loaded):
    import tensorflow as tf

    from kerasllm.export.classifier import ClassifierServer
    from kerasllm.models.classifier import SequenceClassifier
    from kerasllm.serving import ServedModel

    config, tokenizer, backbone = loaded
    model = SequenceClassifier(backbone, num_classes=3, labels=["neg", "neu", "pos"], pad_id=tokenizer.pad_id)
    model.build((None, None))
    live = LiveServer(ServedModel(config, tokenizer, model, "tiny-classifier"))
    try:
        texts = ["the quick brown fox", "lazy", TEXT * 2]
        status, answer = post(live.url + "/v1/classify", {"input": texts}, key=None)
        assert status == 200, answer
        expected = ClassifierServer(model, tokenizer, max_length=config.model.block_size).classify(tf.constant(texts))
        np.testing.assert_allclose([row["probabilities"] for row in answer["data"]],
                                   expected["probabilities"].numpy(), atol=1e-5)
        assert [row["label"] for row in answer["data"]] == [s.decode() for s in expected["label"].numpy()]
        assert [row["class_index"] for row in answer["data"]] == expected["class_index"].numpy().tolist()
        assert answer["labels"] == ["neg", "neu", "pos"]
        status, answer = post(live.url + "/v1/completions", {"prompt": "the"}, key=None)
        assert status == 400 and answer["error"]["code"] == "wrong_model_kind"
    finally:
        live.stop()


# --- the command ------------------------------------------------------------------------------
def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_command_serves_and_stops_cleanly(run_dir, stop_signal):
    env = dict(os.environ, KERASLLM_API_KEY="from-env", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "kerasllm.recipes.serve", "--model", str(run_dir), "--port", "0", "--name", "tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("serving 'tiny' (language model) at http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[5]
        client = openai.OpenAI(base_url=url + "/v1", api_key="from-env", max_retries=0)
        assert client.completions.create(model="tiny", prompt="the", max_tokens=3).usage.completion_tokens == 3
        children = _children(process.pid)
        process.send_signal(stop_signal)
        assert process.wait(60) == 0
        assert "server stopped" in process.stdout.read()
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_command_errors_are_one_line(tmp_path):
    result = run_module("kerasllm.recipes.serve", "--model", tmp_path / "missing")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: --model")
    result = run_module("kerasllm.recipes.serve", "--model", tmp_path, "--max-batch", "0")
    assert result.returncode == 2 and "error: --max-batch 0: expected a positive integer" in result.stderr
    result = run_module("kerasllm.recipes.serve", "--model", tmp_path, "--batch-window-ms", "-5")
    assert result.returncode == 2 and "error: --batch-window-ms -5.0: expected 0..1000 milliseconds" in result.stderr


# --- the scheduler's policy, on a stand-in generator -------------------------------------------
class RecordingGenerator:
    """Answers `generate` with token 7 after every row and records each call's rows and length."""

    context = 64

    def __init__(self):
        self.calls, self.kwargs = [], []

    def generate(self, rows, max_new_tokens, **sampling):
        self.calls.append(([len(r) for r in rows], max_new_tokens))
        self.kwargs.append(sampling)
        return [np.array(list(r) + [7] * max_new_tokens) for r in rows]


def _run_jobs(scheduler, specs):
    """Submits `(prompt length, max tokens, stream)` jobs at once; returns each job's tokens."""
    from kerasllm.serving import Job, Sampling

    done = threading.Semaphore(0)
    jobs = [Job([1] * length, budget, Sampling(temperature=0), lambda kind, value: kind != "tokens" and done.release(),
                stream=stream) for length, budget, stream in specs]
    with scheduler.lock:  # all queued before the first call
        scheduler.submit(jobs)
    for _ in jobs:
        assert done.acquire(timeout=30)
    return [job.tokens for job in jobs]


@pytest.fixture
def scheduler():
    from kerasllm.serving import BatchScheduler

    scheduler = BatchScheduler(RecordingGenerator(), max_batch=4, max_queue=6, chunk_tokens=4)
    scheduler.start()
    yield scheduler
    scheduler.close()


def test_scheduler_batches_then_cuts_each_row(scheduler):
    tokens = _run_jobs(scheduler, [(3, 10, False), (5, 2, False), (9, 6, False)])
    assert scheduler.generator.calls == [([3, 5, 9, 3], 10)]  # one call to the longest, 3 rows padded to 4
    assert [len(t) for t in tokens] == [10, 2, 6]


def test_streaming_rows_decode_in_chunks(scheduler):
    _run_jobs(scheduler, [(3, 10, True)])
    assert [steps for _, steps in scheduler.generator.calls] == [4, 4, 2]


def test_rows_far_apart_in_length_share_a_call(scheduler):
    # The decoding loop starts each row after its own prompt: a length spread costs no steps.
    _run_jobs(scheduler, [(2, 3, False), (30, 3, False), (5, 3, False)])
    assert scheduler.generator.calls == [([2, 30, 5, 2], 3)]


def test_jobs_with_other_settings_share_a_call_with_per_row_settings(scheduler):
    from kerasllm.serving import Job, Sampling

    done = threading.Semaphore(0)
    settings = [Sampling(0.5, 3, 0.9, 11), Sampling(0.0), Sampling(1.2, 0, 1.0, 12)]
    jobs = [Job([1, 2], 3, s, lambda kind, value: kind != "tokens" and done.release()) for s in settings]
    with scheduler.lock:
        scheduler.submit(jobs)
    for _ in jobs:
        assert done.acquire(timeout=30)
    assert len(scheduler.generator.calls) == 1
    kwargs = scheduler.generator.kwargs[0]
    assert kwargs["temperature"][:3] == [0.5, 0.0, 1.2] and kwargs["top_k"][:3] == [3, 0, 0]
    assert kwargs["seed"][0] == 11 and kwargs["seed"][2] == 12 and len(kwargs["seed"]) == 4  # padded to 4 rows
    other = Job([1], 1, Sampling(stop_ids=(5,)), lambda kind, value: None)
    assert scheduler.batch_key(other) != scheduler.batch_key(jobs[0])  # one set of stop ids per call


def test_a_request_that_missed_a_call_does_not_take_a_returning_clients_slot():
    from kerasllm.serving import BatchScheduler, Job, Sampling

    class HeldGenerator(RecordingGenerator):
        """Its first call waits until the test lets it return."""

        release = threading.Event()

        def generate(self, rows, max_new_tokens, **sampling):
            if not self.calls:
                assert self.release.wait(30)
            return super().generate(rows, max_new_tokens, **sampling)

    scheduler = BatchScheduler(HeldGenerator(), max_batch=4, max_queue=8, window_s=2.0)
    scheduler.start()
    done = {}

    def job(name, length):  # the prompt's length tells the jobs apart in the recorded calls
        done[name] = threading.Event()
        return Job([1] * length, 1, Sampling(temperature=0), lambda kind, value: kind != "tokens" and done[name].set())

    try:
        with scheduler.lock:  # three clients at once: the first call
            scheduler.submit([job("a", 1), job("b", 2), job("c", 3)])
        time.sleep(0.2)
        scheduler.submit([job("late", 4)])  # arrives while the first call runs
        scheduler.generator.release.set()
        assert all(done[name].wait(30) for name in "abc")
        for name, length in (("a2", 5), ("b2", 6), ("c2", 7)):  # the three clients come back one by one
            time.sleep(0.05)
            scheduler.submit([job(name, length)])
        assert all(done[name].wait(30) for name in ("late", "a2", "b2", "c2"))
    finally:
        scheduler.close()
    # Counting the late job among the returning clients would have run [4, 5, 6] and then [7] alone.
    assert [rows for rows, _ in scheduler.generator.calls] == [[1, 2, 3, 1], [4, 5, 6, 7]]


def test_the_queue_has_a_bound(scheduler):
    from kerasllm.serving import Job, Sampling
    from kerasllm.serving.batching import QueueFull

    with scheduler.lock, pytest.raises(QueueFull):
        scheduler.submit([Job([1], 1, Sampling(), lambda kind, value: None) for _ in range(7)])


def test_chat_templates(loaded):
    from kerasllm.serving import ServedModel

    config, tokenizer, model = loaded
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the"},
                {"role": "assistant", "content": "fox"}, {"role": "user", "content": "dog"}]
    ids, stops, stop_ids = ServedModel(config, tokenizer, model, "plain").render_chat(messages)
    assert ids == tokenizer.encode("System: be brief\nUser: the\nAssistant: fox\nUser: dog\nAssistant:").tolist()
    assert stops == ["\nUser:", "\nSystem:"] and stop_ids == []
    ids, stops, stop_ids = ServedModel(config, tokenizer, model, "sft", sft=True).render_chat(messages)
    assert ids == [tokenizer.bos_id, *tokenizer.encode("the\ndog").tolist()] and stops == [] and stop_ids == []


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_checkpoint(folder):
    """A tiny random GPT-2 written as a Hugging Face folder whose tokenizer has ChatML's
    special tokens and `chat_template` (as an imported chat model's)."""
    import keras_hub
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([TEXT] * 20, trainer)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=hf.get_vocab_size(), num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32, max_sequence_length=64)
    keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None).export_to_transformers(str(folder))
    (folder / "tokenizer.json").write_text(hf.to_str())
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "chat_template": CHATML}))
    return folder


def test_chat_uses_the_checkpoints_template_and_stops_at_its_end_of_turn(tmp_path):
    from kerasllm.generation import Generator
    from kerasllm.serving import ServedModel

    served = ServedModel.load(chat_checkpoint(tmp_path / "chatml"))
    tokenizer = served.tokenizer
    messages = [{"role": "user", "content": "the quick"}]
    ids, stops, stop_ids = served.render_chat(messages)
    assert ids == tokenizer.encode("<|im_start|>user\nthe quick<|im_end|>\n<|im_start|>assistant\n").tolist()
    assert served.end_of_turn() == "<|im_end|>" and stop_ids == [tokenizer.token_to_id("<|im_end|>")] and not stops

    live = LiveServer(served, max_batch=4)
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=120)
        result = client.chat.completions.create(model=served.name, messages=messages, max_tokens=12, temperature=0)
        assert result.usage.prompt_tokens == len(ids)
        end = (tokenizer.eos_id, *stop_ids)
        out = Generator(served.model, tokenizer).generate([ids], 12, temperature=0, stop_ids=end)[0][len(ids):]
        assert result.choices[0].message.content == tokenizer.decode([i for i in out if i not in end])
        assert result.choices[0].finish_reason == ("stop" if out[-1] in end else "length")
        # A model that always answers <|im_end|> ends its turn there, before any text.
        model, im_end = served.model, tokenizer.token_to_id("<|im_end|>")
        table = model.token_embedding.embeddings
        table.assign(np.where(np.arange(table.shape[0])[:, None] == im_end, 20 * table.numpy(), table.numpy()))
        model.final_norm.gamma.assign(np.zeros(model.final_norm.gamma.shape))
        model.final_norm.beta.assign(table.numpy()[im_end])  # every position's features: im_end's own
        ended = client.chat.completions.create(model=served.name, messages=messages, max_tokens=12, temperature=0)
        assert ended.choices[0].finish_reason == "stop" and ended.choices[0].message.content == ""
        assert ended.usage.completion_tokens == 0
    finally:
        live.stop()


def test_a_finetuned_classifier_run_serves_classify(run_dir, tmp_path):
    import tensorflow as tf

    from kerasllm.config import Config
    from kerasllm.export.classifier import ClassifierServer
    from kerasllm.serving import ServedModel
    from kerasllm.training.finetune import finetune

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"the quick fox {i}\tfast\nthe lazy dog {i}\tslow\n" for i in range(20)))
    config = Config(name="clf")
    for item in [f'data.dataset="{data}"', "train.batch_size=8", "train.max_steps=4", "train.eval_interval=4",
                 "train.warmup_steps=1", "train.jit_compile=false", "finetune.epochs=1"]:
        config.override(item)
    finetune(config, run_dir, tmp_path / "clf", verbose=0)
    served = ServedModel.load(tmp_path / "clf")
    assert served.kind == "classifier" and served.labels == ["fast", "slow"]
    live = LiveServer(served)
    try:
        texts = ["the quick fox", "the lazy dog"]
        status, answer = post(live.url + "/v1/classify", {"model": "clf", "input": texts}, key=None)
        assert status == 200, answer
        expected = ClassifierServer(served.model, served.tokenizer, served.max_length).classify(tf.constant(texts))
        np.testing.assert_allclose([row["probabilities"] for row in answer["data"]],
                                   expected["probabilities"].numpy(), atol=1e-5)
        models = json.load(urllib.request.urlopen(live.url + "/v1/models"))
        assert models["data"][0]["kind"] == "classifier" and models["data"][0]["labels"] == ["fast", "slow"]
    finally:
        live.stop()
