"""Batches concurrent generation requests into shared `Generator.generate` calls.

One worker thread owns the model. Requests (`Job`s, one per generated sequence) wait in a
queue; the worker takes the oldest, waits a few milliseconds for others that can share its
decoding loop (`BatchScheduler.batch_key`), and decodes them in one `generate` call on the
ragged batch (each row starts sampling after its own prompt), run to the largest budget and cut
per row. While
a row streams, the batch decodes in chunks of `chunk_tokens` instead (each chunk one call on
every row's prompt plus the tokens it has so far): between chunks new tokens go to each job,
finished or cancelled rows leave, and waiting jobs with the same key take the free slots.
"""

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("kerasllm.serving")


class QueueFull(Exception):
    """More jobs than the scheduler's `max_queue` are waiting or running."""


class ShuttingDown(Exception):
    """The scheduler is closed; it takes no new jobs."""


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one job (`temperature == 0` is greedy)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: tuple = ()

    def normalized(self):
        """Greedy decoding ignores top-k, top-p and the seed: drop them, so greedy jobs all look alike."""
        if self.temperature <= 0:
            return Sampling(0.0, 0, 1.0, None, self.stop_ids)
        return self


class Job:
    """One sequence to generate: prompt ids, a token budget, and a callback for its events.

    `deliver(kind, value)` is called from the worker thread with `("tokens", [ids])` for each
    chunk, then once with `("done", "length" | "stop" | "cancelled")` or `("error", message)`.

    Args:
        prompt_ids: the prompt (at least one id).
        max_new_tokens: the budget.
        sampling: a `Sampling`.
        deliver: the event callback.
        stream: the client reads tokens as they come (its batch decodes in chunks).
    """

    _ids = itertools.count()

    def __init__(self, prompt_ids, max_new_tokens, sampling, deliver, stream=False):
        self.id = next(Job._ids)
        self.stream = stream
        self.prompt = [int(i) for i in prompt_ids]
        self.max_new_tokens = int(max_new_tokens)
        self.sampling = sampling.normalized()
        # An unseeded row still needs one seed for all its chunks.
        self.seed = sampling.seed if sampling.seed is not None else int(np.random.randint(0, 2**31 - 1))
        self.deliver = deliver
        self.tokens = []
        self.cancelled = False
        self.submitted = time.monotonic()

    def cancel(self):
        """Asks the worker to drop this row at the next chunk boundary."""
        self.cancelled = True

    @property
    def remaining(self):
        return self.max_new_tokens - len(self.tokens)


class BatchScheduler:
    """Runs `Job`s on a `Generator`, batching those that can share a decoding loop.

    Args:
        generator: a `kerasllm.generation.Generator`.
        max_batch: rows per `generate` call.
        max_queue: jobs waiting or running at once; `submit` raises `QueueFull` beyond it.
        chunk_tokens: tokens per `generate` call between two chances to stream and re-batch.
        window_s: how long a new batch waits at most for as many jobs as the previous batch had,
            besides those that arrived while it ran (a lone client does not wait).
        lock: held around every model call (the server's scoring shares the model).

    Examples:

    >>> from kerasllm.generation import Generator
    >>> from kerasllm.models import GPT
    >>> scheduler = BatchScheduler(Generator(GPT(vocab_size=20, block_size=16, n_layer=1, n_head=2,
    ...                                          n_embd=16)), max_batch=4)
    >>> scheduler.start()
    >>> events = []
    >>> done = threading.Event()
    >>> def deliver(kind, value):
    ...     events.append((kind, value))
    ...     if kind != "tokens":
    ...         done.set()
    >>> scheduler.submit([Job([1, 2, 3], 5, Sampling(temperature=0), deliver)])
    >>> done.wait(120)
    True
    >>> sum(len(v) for k, v in events if k == "tokens"), events[-1]
    (5, ('done', 'length'))
    >>> scheduler.close()
    """

    def __init__(self, generator, max_batch=8, max_queue=64, chunk_tokens=16, window_s=0.02, lock=None):
        if max_batch < 1 or max_queue < 1 or chunk_tokens < 1:
            raise ValueError("max_batch, max_queue and chunk_tokens must be positive")
        self.generator = generator
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.chunk_tokens = chunk_tokens
        self.window_s = window_s
        self._last_batch = 1
        self._call_ended = 0.0  # time.monotonic() when the last decoding call returned
        self.lock = lock or threading.Lock()
        self._waiting = collections.deque()
        self._active = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="kerasllm-batcher", daemon=True)
        self.stats = collections.Counter()  # calls, rows, tokens: for /health and the benchmark

    # --- the policy: which jobs share a call, and how long a call runs ------------------
    @staticmethod
    def batch_key(job):
        """Jobs with equal keys decode in one call.

        Sampling settings and seeds go to `generate` one per row, and a row's random draws are
        keyed by its own (seed, position), so they never split a batch: a seeded row gets the
        text it gets alone. Only the stop ids do, because the loop takes one set per call and
        ends once every row has produced one of them.
        """
        return job.sampling.stop_ids

    def chunk_for(self, batch):
        """Tokens the next call decodes: chunks while someone streams, else every job to its end.

        Each call prefills its rows again, so chunks cost time; only streaming earns them. A
        chunked row samples the tokens of one long call: its draws are keyed by position.
        """
        longest = max(job.remaining for job in batch)
        if not any(job.stream for job in batch):
            return longest
        return min(self.chunk_tokens, longest)

    # --- the public side -----------------------------------------------------------------
    def warm_up(self, sampling):
        """Compiles the decoding loop at every batch bucket and buffer length (for `sampling`'s stop ids).

        A GPT's loop compiles once per (batch rows, buffer length, number of stop ids) — the
        sampler settings are inputs, not constants; rows are padded
        to powers of two and buffers to multiples of 64, so a few calls cover every request
        with these settings. Returns the number of shapes compiled (0 for an LSTM, whose
        buffers are not bucketed).
        """
        from kerasllm.generation.generator import BUCKET

        if self.generator.context is None:  # an LSTM: no fixed context, buffers not bucketed
            return 0
        s = sampling.normalized()
        context = self.generator.context
        lengths = sorted({min(length, context) for length in range(BUCKET, context + BUCKET, BUCKET)})
        sizes = sorted({self._bucket(rows) for rows in range(1, self.max_batch + 1)})
        for rows in sizes:
            for length in lengths:
                with self.lock:
                    self.generator.generate([[0] * (length - 1)] * rows, max_new_tokens=1, temperature=s.temperature,
                                            top_k=s.top_k, top_p=s.top_p, seed=0, stop_ids=s.stop_ids)
        return len(sizes) * len(lengths)

    def start(self):
        self._thread.start()

    def load(self):
        """Jobs waiting or running."""
        with self._cond:
            return len(self._waiting) + len(self._active)

    def submit(self, jobs):
        """Queues `jobs` (all or none); raises `QueueFull` or `ShuttingDown`."""
        with self._cond:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) + len(self._active) + len(jobs) > self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already queued or running; retry later")
            self._waiting.extend(jobs)
            self._cond.notify()

    def close(self, timeout=30.0):
        """Stops taking jobs, lets the running batch end its chunk, fails the rest, joins."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            left = list(self._waiting) + self._active
            self._waiting.clear()
            self._active = []
        for job in left:
            job.deliver("error", "the server shut down before this request finished")

    # --- the worker ----------------------------------------------------------------------
    def _run(self):
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._decode_chunk(batch)
            except Exception as error:  # one failing batch must not stop the server
                log.exception("generation failed")
                with self._cond:
                    self._active = [job for job in self._active if job not in batch]
                for job in batch:
                    job.deliver("error", f"generation failed: {error}")

    def _next_batch(self):
        """The active rows plus waiting jobs that may join them; blocks while idle."""
        with self._cond:
            self._active = [job for job in self._active if not self._finished(job)]
            if not self._active:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                # Clients answered by the last batch are likely sending their next requests:
                # wait (at most window_s) until as many jobs as it had are here, besides the
                # jobs that came while it ran. Counting those among the returning clients
                # would split a fixed set of clients into two batches for good: a late
                # request misses a call, fills a slot of the next, and pushes a returning
                # client out of it, which then misses that call in turn.
                missed = sum(1 for job in self._waiting if job.submitted < self._call_ended)
                expected = min(self._last_batch + missed, self.max_batch)
                self._active = [self._waiting.popleft()]
                deadline = time.monotonic() + self.window_s
                while not self._closed:
                    self._admit()
                    left = deadline - time.monotonic()
                    if left <= 0 or len(self._active) >= expected:
                        break
                    self._cond.wait(left)
                self._last_batch = len(self._active)
            elif self._closed:
                return None
            self._admit()
            return list(self._active)

    def _admit(self):
        """Moves waiting jobs with the active key into free slots, oldest first.

        Prompt lengths do not matter: the decoding loop starts each row after its own prompt.

        A job with another key that waits in front stops admission: the batch then drains and
        that job's key goes next, so no key starves.
        """
        key = self.batch_key(self._active[0])
        for job in list(self._waiting):
            if len(self._active) >= self.max_batch:
                return
            if job.cancelled:
                self._waiting.remove(job)
                job.deliver("done", "cancelled")
                continue
            if self.batch_key(job) != key:
                return
            self._waiting.remove(job)
            self._active.append(job)

    @staticmethod
    def _finished(job):
        return job.cancelled or job.remaining <= 0 or getattr(job, "_stopped", False)

    def _decode_chunk(self, batch):
        live = [job for job in batch if not job.cancelled]
        for job in batch:
            if job.cancelled:
                job.deliver("done", "cancelled")
        if not live:
            return
        steps = self.chunk_for(live)
        rows = [self._window(job.prompt + job.tokens, steps) for job in live]
        padded = rows + [rows[0]] * (self._bucket(len(rows)) - len(rows))  # fewer compiled shapes
        padded_jobs = live + [live[0]] * (len(padded) - len(rows))
        settings = [job.sampling for job in padded_jobs]
        stop_ids = live[0].sampling.stop_ids
        started = time.perf_counter()
        with self.lock:
            out = self.generator.generate(
                padded, max_new_tokens=steps, temperature=[s.temperature for s in settings],
                top_k=[s.top_k for s in settings], top_p=[s.top_p for s in settings],
                seed=[job.seed for job in padded_jobs], stop_ids=stop_ids,
            )
        self._call_ended = time.monotonic()
        self.stats.update(calls=1, rows=len(live), steps=steps, busy_ms=int(1000 * (time.perf_counter() - started)))
        for job, row, ids in zip(live, rows, out):
            new = [int(i) for i in np.asarray(ids)[len(row):]][: job.remaining]
            stop_at = next((k for k, i in enumerate(new) if i in stop_ids), None)
            if stop_at is not None:
                new, job._stopped = new[: stop_at + 1], True
            job.tokens += new
            self.stats.update(tokens=len(new))
            if new:
                job.deliver("tokens", new)
            if stop_at is not None:
                job.deliver("done", "stop")
            elif job.remaining <= 0:
                job.deliver("done", "length")

    def _window(self, ids, steps):
        """A GPT sees its last `block_size - steps` tokens (the server keeps rows within it)."""
        if self.generator.context is not None and len(ids) + steps > self.generator.context:
            return ids[len(ids) + steps - self.generator.context :]
        return ids

    def _bucket(self, rows):
        size = 1
        while size < rows:
            size *= 2
        return max(min(size, self.max_batch), rows)

