"""The HTTP routes: OpenAI's completions, chat and models endpoints, classify, health, playground.

Requests are validated here (`schemas`), turned into `Job`s for the `BatchScheduler` (which
owns the model's decoding loop) and answered as JSON or as server-sent events in OpenAI's
chunk format. Every failure is OpenAI's error JSON, `{"error": {"message", "type", "param",
"code"}}`, with its HTTP status.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from kerasllm.errors import DataError
from kerasllm.generation import Generator, StopStrings
from kerasllm.serving.batching import (
    BatchScheduler,
    Job,
    QueueFull,
    Sampling,
    ShuttingDown,
)
from kerasllm.serving.schemas import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    ValidationError,
    describe_error,
)
from kerasllm.serving.scoring import token_logprobs

log = logging.getLogger("kerasllm.serving")


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status, message, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self):
        return JSONResponse(self.body(), status_code=self.status)


def create_app(served, api_key=None, max_batch=8, max_queue=64, chunk_tokens=16, max_body_bytes=1 << 20,
               batch_window_s=0.02):
    """The Starlette application serving `served` (a `ServedModel`).

    Args:
        served: the model.
        api_key: when set, `/v1/*` needs `Authorization: Bearer <api_key>`.
        max_batch: rows per decoding call.
        max_queue: sequences waiting or running before requests get 429.
        chunk_tokens: tokens per decoding call between streamed chunks.
        max_body_bytes: larger request bodies get 413.
        batch_window_s: how long a new batch waits for concurrent requests.

    Returns:
        The app; `app.state.server` is the `Server` (its scheduler, its model lock).
    """
    server = Server(served, api_key, max_batch, max_queue, chunk_tokens, max_body_bytes, batch_window_s)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.start()
        try:
            yield
        finally:
            await run_in_threadpool(server.close)

    routes = [
        Route("/", server.playground, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.api(server.models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", server.api(server.model_info), methods=["GET"]),
        Route("/v1/completions", server.api(server.completions), methods=["POST"]),
        Route("/v1/chat/completions", server.api(server.chat), methods=["POST"]),
        Route("/v1/classify", server.api(server.classify), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        404: lambda request, exc: APIError(404, f"no route {request.url.path}", code="not_found").response(),
        405: lambda request, exc: APIError(405, f"{request.method} is not allowed on {request.url.path}").response(),
    })
    app.state.server = server
    return app


class Server:
    """The state behind the routes: the model, its scheduler, the limits."""

    def __init__(self, served, api_key, max_batch, max_queue, chunk_tokens, max_body_bytes, batch_window_s):
        self.served = served
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.lock = threading.Lock()  # one model call at a time: decoding, scoring, classifying
        self.scheduler = None
        if served.kind == "language_model":
            self.generator = Generator(served.model, served.tokenizer)
            self.scheduler = BatchScheduler(self.generator, max_batch=max_batch, max_queue=max_queue,
                                            chunk_tokens=chunk_tokens, window_s=batch_window_s, lock=self.lock)
        self.max_batch = max_batch

    def start(self):
        if self.scheduler is not None:
            self.scheduler.start()

    def close(self):
        if self.scheduler is not None:
            self.scheduler.close()

    # --- plumbing ------------------------------------------------------------------------
    def api(self, handler):
        """Wraps a `/v1` handler: the API key, then OpenAI-shaped errors for whatever fails."""

        async def route(request):
            try:
                self._check_key(request)
                return await handler(request)
            except APIError as error:
                return error.response()
            except Exception as error:  # a bug must answer 500, not drop the connection
                log.exception("request failed")
                return APIError(500, f"internal error: {error}", type="server_error").response()

        return route

    def _check_key(self, request):
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not given:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")

    async def _body(self, request, schema):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        body = bytearray()
        try:
            async for piece in request.stream():
                body += piece
                if len(body) > self.max_body_bytes:
                    raise self._too_large()
        except ClientDisconnect:
            raise APIError(400, "the client disconnected while sending the body")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not valid JSON: {error}", code="invalid_json")
        if not isinstance(data, dict):
            raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
        self._check_model(data.get("model"))
        try:
            return schema.model_validate(data)
        except ValidationError as error:
            message, param = describe_error(error)
            raise APIError(400, message, param=param, code="invalid_value")

    def _too_large(self):
        return APIError(413, f"the request body is larger than {self.max_body_bytes} bytes", code="request_too_large")

    def _check_model(self, name):
        if name is not None and name != self.served.name:
            raise APIError(404, f"The model '{name}' does not exist; this server has '{self.served.name}'",
                           param="model", code="model_not_found")

    def _need(self, kind, route):
        if self.served.kind != kind:
            other = "/v1/classify" if kind == "language_model" else "/v1/completions"
            raise APIError(400, f"{route} needs a {kind.replace('_', ' ')}; '{self.served.name}' is a "
                           f"{self.served.kind.replace('_', ' ')} (use {other})", param="model",
                           code="wrong_model_kind")

    # --- simple routes -------------------------------------------------------------------
    async def playground(self, request):
        page = resources.files("kerasllm.serving").joinpath("playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    async def health(self, request):
        load = self.scheduler.load() if self.scheduler else 0
        stats = dict(self.scheduler.stats) if self.scheduler else {}
        return JSONResponse({"status": "ok", "model": self.served.name, "kind": self.served.kind,
                             "api_key": self.api_key is not None, "queued": load,
                             "decoding": {key: stats.get(key, 0) for key in ("calls", "rows", "tokens", "busy_ms")}})

    def _model_card(self):
        card = {"id": self.served.name, "object": "model", "created": self.served.created, "owned_by": "kerasllm",
                "kind": self.served.kind, "context_length": self.served.block_size}
        if self.served.kind == "classifier":
            card["labels"] = self.served.labels
        return card

    async def models(self, request):
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model_info(self, request):
        self._check_model(request.path_params["model_id"])
        return JSONResponse(self._model_card())

    async def classify(self, request):
        body = await self._body(request, ClassifyRequest)
        self._need("classifier", "/v1/classify")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise APIError(400, "input: expected at least one text", param="input")

        def run():
            with self.lock:
                return self.served.classify(texts)

        probabilities = await run_in_threadpool(run)
        labels = self.served.labels
        data = [{"object": "classification", "index": i, "label": labels[int(p.argmax())],
                 "class_index": int(p.argmax()), "probabilities": [float(x) for x in p]}
                for i, p in enumerate(probabilities)]
        tokens = sum(min(len(self.served.encode(t)), self.served.max_length) for t in texts)
        return JSONResponse({"object": "list", "model": self.served.name, "labels": labels, "data": data,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # --- generation ----------------------------------------------------------------------
    def _max_tokens(self, requested, default, param="max_tokens"):
        cap = self.served.max_new_tokens
        if requested is None:
            return min(default, cap)
        if requested > cap:
            raise APIError(400, f"{param} = {requested} is over this server's cap of {cap} (export.max_new_tokens, "
                           f"and a GPT's context {self.served.block_size} - 1)", param=param, code="invalid_value")
        return requested

    def _prompts(self, prompt):
        """The request's prompts as id lists (strings, a list of strings, ids or lists of ids)."""
        prompt = _as_list(prompt)
        if not prompt:
            raise APIError(400, "prompt: expected at least one prompt", param="prompt")
        vocab = self.served.tokenizer.vocabulary_size
        rows = []
        for p in prompt:
            ids = self.served.encode(p) if isinstance(p, str) else list(p)
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise APIError(400, f"prompt: token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt")
            rows.append(ids)
        return rows

    def _sampling(self, body, stops, extra_stop_ids=()):
        single = Generator.single_token_stops(self.generator, stops) if stops else ()
        stop_ids = tuple(sorted({int(self.served.tokenizer.eos_id), *single, *map(int, extra_stop_ids)}))
        return Sampling(body.temperature, body.top_k, body.top_p, body.seed, stop_ids)

    def _submit(self, prompts, max_tokens, sampling, n, loop, events, stream):
        """One `Job` per (prompt, sample); their events land on `events` as `(choice, kind, value)`."""
        jobs = []
        for p, ids in enumerate(prompts):
            for j in range(n):
                seed = None if sampling.seed is None else sampling.seed + j
                choice = p * n + j

                def deliver(kind, value, choice=choice):
                    loop.call_soon_threadsafe(events.put_nowait, (choice, kind, value))

                row_sampling = Sampling(sampling.temperature, sampling.top_k, sampling.top_p, seed, sampling.stop_ids)
                jobs.append(Job(ids, max_tokens, row_sampling, deliver, stream=stream))
        try:
            self.scheduler.submit(jobs)
        except QueueFull as error:
            raise APIError(429, str(error), type="rate_limit_error", code="queue_full")
        except ShuttingDown as error:
            raise APIError(503, str(error), type="server_error", code="shutting_down")
        return jobs

    async def _decode(self, prompts, max_tokens, sampling, stops, n, stream=False):
        """Async iterator of `(choice, piece_of_text, Choice)` while the jobs run; ends when all are done."""
        choices = [Choice(self.served, ids, stops, sampling.stop_ids) for ids in prompts for _ in range(n)]
        if max_tokens == 0:
            for c in choices:
                c.finish("length")
            return choices, _empty()
        loop = asyncio.get_running_loop()
        events = asyncio.Queue()
        jobs = self._submit([c.prompt for c in choices[::n]], max_tokens, sampling, n, loop, events, stream)
        for c, job in zip(choices, jobs):
            c.job = job

        async def pieces():
            try:
                while not all(c.finish_reason for c in choices):
                    index, kind, value = await events.get()
                    c = choices[index]
                    if c.finish_reason:
                        continue
                    if kind == "error":
                        raise APIError(500, value, type="server_error")
                    if kind == "tokens":
                        piece = c.add(value)
                        if piece:
                            yield index, piece
                    else:
                        c.finish(value)
                    if c.finish_reason:
                        tail = c.flush()
                        if tail:
                            yield index, tail
            finally:
                for job in jobs:  # a client that left, or an error: free the slots
                    job.cancel()

        return choices, pieces()

    def _fit(self, prompts, max_tokens):
        try:
            return [self.served.fit_prompt(ids, max_tokens) if max_tokens else ids for ids in prompts]
        except ValueError as error:
            raise APIError(400, str(error), param="prompt", code="context_length_exceeded")

    async def completions(self, request):
        body = await self._body(request, CompletionRequest)
        self._need("language_model", "/v1/completions")
        if body.echo and body.stream:
            raise APIError(400, "echo with stream=true is not supported", param="echo")
        max_tokens = self._max_tokens(body.max_tokens, 16)
        prompts = self._prompts(body.prompt)
        texts = [p if isinstance(p, str) else self.served.decode(p) for p in _as_list(body.prompt)]
        return await self._respond(body, prompts, max_tokens, body.stops(), chat=False, top=body.logprobs,
                                   texts=texts)

    async def chat(self, request):
        body = await self._body(request, ChatRequest)
        self._need("language_model", "/v1/chat/completions")
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = self._max_tokens(requested, self.served.max_new_tokens, param)
        try:
            ids, template_stops, template_stop_ids = self.served.render_chat(
                [{"role": m.role, "content": m.text()} for m in body.messages])
        except DataError as error:  # a chat template that rejects the conversation
            raise APIError(400, str(error), param="messages")
        return await self._respond(body, [ids], max_tokens, body.stops() + template_stops, template_stop_ids,
                                   chat=True, top=(body.top_logprobs or 0) if body.logprobs else None)

    async def _respond(self, body, prompts, max_tokens, stops, stop_ids=(), chat=False, top=None, texts=None):
        """The flow both generation routes share: decode `prompts`, answer JSON or a stream.

        Args:
            body: the validated request.
            prompts: prompt id lists (before fitting them into the context).
            max_tokens: new tokens per choice.
            stops: stop strings; `stop_ids`: extra stop ids (a chat template's end of turn).
            chat: answer in the chat format (else the completions format).
            top: None for no log-probabilities, else how many alternatives per token.
            texts: the completions' prompt texts (for `echo`).
        """
        sampling = self._sampling(body, stops, stop_ids)
        choices, pieces = await self._decode(self._fit(prompts, max_tokens), max_tokens, sampling, stops, body.n,
                                             body.stream)
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": self.served.name}
        if body.stream:
            return self._stream(pieces, choices, meta, chat, _include_usage(body), top)
        async for _ in pieces:
            pass
        out = []
        for i, c in enumerate(choices):
            if chat:
                item = {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                        "finish_reason": c.finish_reason}
                if top is not None:
                    entries = await self._generated_logprobs(c, 0, top)
                    item["logprobs"] = {"content": _chat_logprobs(self.served, entries, top)}
            else:
                echo = texts[i // body.n] if body.echo else ""
                item = {"text": echo + c.text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                if top is not None:
                    item["logprobs"] = await self._completion_logprobs(prompts[i // body.n], c, top, body.echo)
            out.append(item)
        return JSONResponse({**meta, "object": "chat.completion" if chat else "text_completion", "choices": out,
                             "usage": _usage(prompts, choices, body.n)})

    def _stream(self, pieces, choices, meta, chat, include_usage, top=None):
        """Server-sent events in OpenAI's chunk format; with `top`, each chunk carries the
        log-probabilities of the tokens whose text it brings."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        scored = [0] * len(choices)  # tokens of each choice whose log-probabilities were sent
        offsets = [len(self.served.decode(c.prompt)) for c in choices]  # completions' text_offset

        async def logprobs(index):
            if top is None:
                return None
            entries = await self._generated_logprobs(choices[index], scored[index], top)
            scored[index] += len(entries)
            if chat:
                return {"content": _chat_logprobs(self.served, entries, top)}
            shown = _completion_entries(self.served, entries, top, offsets[index])
            offsets[index] += sum(len(t) for t in shown["tokens"])
            return shown

        def chunk(index, text=None, finish=None, first=False, scores=None):
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
                choice = {"index": index, "delta": delta, "logprobs": scores, "finish_reason": finish}
            else:
                choice = {"text": text or "", "index": index, "logprobs": scores, "finish_reason": finish}
            return _sse({**meta, "object": kind, "choices": [choice]})

        async def events():
            if chat:
                for i in range(len(choices)):
                    yield chunk(i, first=True)
            finished = set()
            try:
                async for index, piece in pieces:
                    yield chunk(index, piece, scores=await logprobs(index))
                    for i, c in enumerate(choices):
                        if c.finish_reason and i not in finished and not c.pending():
                            finished.add(i)
                            yield chunk(i, finish=c.finish_reason)
                for i, c in enumerate(choices):
                    if i not in finished:
                        yield chunk(i, finish=c.finish_reason)
                if include_usage:
                    yield _sse({**meta, "object": kind, "choices": [], "usage": _usage(
                        [c.prompt for c in choices], choices, 1)})
            except APIError as error:
                yield _sse(error.body())
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- log-probabilities ---------------------------------------------------------------
    async def _scores(self, ids, top):
        def run():
            with self.lock:
                return token_logprobs(self.served.model, ids, self.served.block_size, self.served.score_stride, top=top)

        return await run_in_threadpool(run)

    async def _completion_logprobs(self, prompt_ids, choice, top, echo):
        """OpenAI's legacy `logprobs` object; with `echo` the prompt's tokens come first.

        The first token of the text has no log-probability (`None`), as in OpenAI's API;
        every other token is scored given the tokens before it with `evaluate`'s windows.
        """
        if not echo:  # a continuation is scored after the prompt the model saw
            entries = await self._generated_logprobs(choice, 0, top)
            return _completion_entries(self.served, entries, top, len(self.served.decode(prompt_ids)))
        # Echo scores the whole prompt, then the continuation.
        sequence = list(prompt_ids) + choice.kept_ids()
        logprobs, tops = await self._scores(sequence, top)
        positions = range(len(sequence))
        tokens = [self.served.token_text(sequence[p]) for p in positions]
        offsets, offset = [], 0
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [float(logprobs[p - 1]) if p else None for p in positions],
            "top_logprobs": [
                {self.served.token_text(i): lp for i, lp in tops[p - 1]} if p else None for p in positions
            ] if top else None,
            "text_offset": offsets,
        }

    async def _generated_logprobs(self, choice, first, top):
        """`[(token id, logprob, [(alternative id, logprob), ...])]` of the generated tokens kept
        in the choice's text from the `first` on, each given the prompt the model saw and the
        tokens before it."""
        kept = choice.kept_ids()
        if first >= len(kept):
            return []
        sequence = choice.prompt + kept
        logprobs, tops = await self._scores(sequence, max(top, 1))
        base = len(choice.prompt) - 1  # logprobs[p] scores sequence[p + 1]
        return [(kept[i], float(logprobs[base + i]), tops[base + i]) for i in range(first, len(kept))]


def _chat_logprobs(served, entries, top):
    """The chat format's `logprobs.content` list."""
    def item(token_id, logprob):
        text = served.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return [dict(item(i, lp), top_logprobs=[item(a, b) for a, b in alternatives[:top]])
            for i, lp, alternatives in entries]


def _completion_entries(served, entries, top, offset):
    """The completions format's `logprobs` object of `entries`, text offsets from `offset`."""
    tokens = [served.token_text(i) for i, _, _ in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{served.token_text(a): b for a, b in alternatives[:top]} for _, _, alternatives in entries]
            if top else None, "text_offset": offsets}


class Choice:
    """One generated sequence as the client sees it: text so far, stop strings, finish reason."""

    def __init__(self, served, prompt, stops, stop_ids):
        self.served = served
        self.prompt = prompt
        self.stopper = StopStrings(stops)
        self.stop_ids = set(stop_ids)
        self.ids = []  # generated ids, without a final stop id
        self.decoded = ""  # decode(ids)
        self.text = ""  # what the client has been sent
        self.finish_reason = None
        self.job = None

    def add(self, tokens):
        """New ids from the scheduler; returns the text that became showable."""
        for token in tokens:
            if token in self.stop_ids:
                self.finish("stop")
                break
            self.ids.append(token)
        decoded = self.served.decode(self.ids)
        piece, self.decoded = decoded[len(self.decoded):], decoded
        shown = self.stopper.feed(piece)
        self.text += shown
        if self.stopper.done:
            self.finish("stop")
        return shown

    def finish(self, reason):
        if self.finish_reason is None:
            self.finish_reason = "length" if reason == "cancelled" else reason
            if self.job is not None:
                self.job.cancel()

    def flush(self):
        tail = self.stopper.flush()
        self.text += tail
        return tail

    def pending(self):
        return bool(self.stopper.pending)

    def kept_ids(self):
        """The generated ids that make up `text` (a stop string cuts inside the ids)."""
        kept = list(self.ids)
        while kept and len(self.served.decode(kept)) > len(self.text):
            kept.pop()
        return kept


def _as_list(prompt):
    return [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else list(prompt)


async def _empty():
    return
    yield


def _sse(payload):
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _include_usage(body):
    return bool((body.stream_options or {}).get("include_usage"))


def _usage(prompts, choices, n):
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(len(c.ids) for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
