"""Dynamic batching: a request's texts are tokenized off the event loop and queued; inference
worker threads drain the queue into length-sorted, token-budgeted batches and hand each request
its own rows.

- Admission: submit() counts a request's texts against the queue bound before anything else, so
  a full server refuses (QueueFull, 429) at once, without spending CPU on tokenization.
- Tokenization runs on tokenizer threads, which put the tokenized texts straight on the queue:
  one thread hand-off from the event loop to the queue, none back.
- A worker is a plain thread (ONNX Runtime and PyTorch release the GIL while they compute). It
  blocks on a condition variable while the queue is empty, so an idle server never waits on a
  timer: the first text to arrive wakes it.
- Texts of concurrent requests share batches. A free worker takes a window of queued texts in
  arrival order (at most one batch worth), sorts it by length and cuts it into batches that
  minimise padded tokens plus a per-batch overhead, within max_batch_tokens (texts x longest)
  and max_batch_texts.
- Gathering. Under load texts arrive in waves: in a closed loop the requests of a batch that
  just finished come back a round trip later. A worker that took whatever was queued the moment
  it became free would run batches of every size, down to one text. So a free worker whose
  queue holds less than its share of the recent load waits for more. The share is the peak of
  texts in the server (tokenizing + queued + computing) split over the workers plus one: one
  share is always on its way back while the others compute, so no worker idles through the
  round trip. The wait is bounded three ways: max_batch_wait_s, a quarter of a batch's compute
  time, and only while texts are still arriving (being tokenized, or queued within the last
  millisecond). A lone request is never held: its share is one text.
- Results go back to each request's asyncio future through one call_soon_threadsafe per batch.
  An exception in a batch fails exactly the requests that had a text in that batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from server.runtime.base import TokenizedText

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[TokenizedText]], np.ndarray]
TokenizeFn = Callable[[list[str]], list[TokenizedText]]

# A worker stops gathering when no text was queued for this long (counted from when it became
# free) and none is being tokenized: the wave is over. Long enough for a loopback round trip
# on a loaded host, short against any batch worth gathering for.
ARRIVAL_GAP_S = 0.001
# ...and never waits longer than this fraction of a batch's compute time, so that waiting
# costs at most a fifth of a worker's time (x / (1 + x) at x = 1/4).
GATHER_FRACTION = 0.25
# Requests tokenized together by one tokenizer call, at most.
TOKENIZE_JOBS_PER_CALL = 64
# How fast the load estimate follows a falling load (per window taken); a rising load is
# followed at once.
LOAD_DECAY = 0.5


class BatcherError(Exception):
    """Base class of the errors submit() raises."""


class QueueFull(BatcherError):
    def __init__(self, queued: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"queue full: {queued} texts waiting (limit {limit})")
        self.queued = queued
        self.limit = limit
        self.retry_after_s = retry_after_s


class ShuttingDown(BatcherError):
    def __init__(self) -> None:
        super().__init__("the server is shutting down")


class TextTooLong(BatcherError):
    """A text is longer than the model's max_seq_length and the request said not to truncate."""

    def __init__(self, index: int, max_tokens: int) -> None:
        super().__init__(f"text {index} is longer than {max_tokens} tokens")
        self.index = index


class TokenizationError(BatcherError):
    """The tokenizer raised on one of this request's texts."""


class InferenceError(BatcherError):
    """The runtime raised while computing a batch that held one of this request's texts."""


@dataclass(frozen=True, slots=True)
class BatchStats:
    texts: int
    padded_tokens: int
    real_tokens: int
    seconds: float
    gathered_s: float  # how long the worker waited for more texts before taking the window


@dataclass(frozen=True, slots=True)
class EmbedResult:
    vectors: np.ndarray  # (texts, dim) float32, in the order submitted
    prompt_tokens: int  # tokens of all the texts, unpadded
    truncated: list[bool]  # per text: cut to max_seq_length
    tokenization_s: float
    queue_s: float  # queued -> start of the first batch holding one of the texts
    inference_s: float  # start of the first batch -> end of the last one
    batches: int  # how many batches the texts were spread over
    batch_texts: int  # texts in the largest of those batches (shared with other requests)


@dataclass(slots=True, eq=False)
class _Job:
    future: asyncio.Future[EmbedResult]
    texts: Sequence[str]
    truncate: bool
    n: int
    remaining: int
    tokenized: list[TokenizedText] = field(default_factory=list)
    prompt_tokens: int = 0
    truncated: list[bool] = field(default_factory=list)
    tokenization_s: float = 0.0
    enqueued_at: float = 0.0
    vectors: np.ndarray | None = None
    started_at: float = 0.0
    batches: int = 0
    batch_texts: int = 0
    failed: bool = False  # set by the worker only
    abandoned: bool = False  # the caller went away (future cancelled); skip its texts


@dataclass(slots=True)
class _Entry:
    job: _Job
    index: int
    item: TokenizedText


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_batch_texts: int,
    batch_overhead_tokens: int = 8,
) -> list[list[int]]:
    """Split texts (given by their token counts) into batches, returned as lists of indices.

    Texts are sorted by length; consecutive runs become batches. The split minimises
    sum(batch texts x batch longest) + batch_overhead_tokens per batch (an exact dynamic
    programme, O(n x max_batch_texts)), subject to texts x longest <= max_batch_tokens and
    texts <= max_batch_texts. A single text longer than the budget gets a batch of its own.
    """
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    if sorted_lengths[-1] - sorted_lengths[0] <= batch_overhead_tokens:
        # Uniform lengths: padding is negligible, only the budget splits.
        cuts = []
        start = 0
        while start < n:
            size = max(1, min(max_batch_texts, max_batch_tokens // max(sorted_lengths[-1], 1)))
            cuts.append(order[start : start + size])
            start += size
        return cuts
    inf = math.inf
    cost = [0.0] + [inf] * n
    back = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = sorted_lengths[end - 1]
        limit = min(max_batch_texts, max(1, max_batch_tokens // max(longest, 1)))
        for size in range(1, min(limit, end) + 1):
            candidate = cost[end - size] + batch_overhead_tokens + size * longest
            if candidate < cost[end]:
                cost[end] = candidate
                back[end] = end - size
    batches: list[list[int]] = []
    end = n
    while end > 0:
        start = back[end]
        batches.append(order[start:end])
        end = start
    batches.reverse()
    return batches


@dataclass
class _Counters:
    tokenizing_texts: int = 0  # admitted, not yet queued
    queued_texts: int = 0
    queued_tokens: int = 0
    computing_texts: int = 0  # in windows the workers hold
    inflight_requests: int = 0
    busy_workers: int = 0
    texts_per_s: float = 0.0  # EWMA of worker throughput, for Retry-After
    batch_s: float = 0.0  # EWMA of one batch's compute time, bounds gathering
    batches: int = 0
    last_queued_at: float = 0.0
    peak_texts: int = 0  # most texts in the server since the last window was taken
    load_texts: float = 0.0  # the estimate of the offered load, in texts in the server

    @property
    def texts_in_server(self) -> int:
        return self.tokenizing_texts + self.queued_texts + self.computing_texts

    @property
    def waiting_texts(self) -> int:
        return self.tokenizing_texts + self.queued_texts


class Batcher:
    def __init__(
        self,
        embed: EmbedFn,
        tokenize: TokenizeFn,
        *,
        max_batch_tokens: int,
        max_batch_texts: int,
        max_queue: int,
        max_batch_wait_s: float = 0.005,
        arrival_gap_s: float = ARRIVAL_GAP_S,
        max_seq_length: int | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        batch_overhead_tokens: int = 8,
        workers: int = 1,
        tokenizer_threads: int = 1,
        name: str = "inference-worker",
    ) -> None:
        if workers < 1 or tokenizer_threads < 1:
            raise ValueError("workers and tokenizer_threads must be >= 1")
        if max_batch_wait_s < 0:
            raise ValueError("max_batch_wait_s must be >= 0")
        self._embed = embed
        self._tokenize = tokenize
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.max_queue = max_queue
        self.max_batch_wait_s = max_batch_wait_s
        self.arrival_gap_s = arrival_gap_s
        self.max_seq_length = max_seq_length
        self._on_batch = on_batch
        self._overhead = batch_overhead_tokens
        self._name = name
        self.workers = workers
        self.tokenizer_threads = tokenizer_threads
        self._queue: deque[_Entry] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._counters = _Counters()
        self._stopping = False
        self._gathering = False  # one free worker at a time waits for more texts
        self._threads: list[threading.Thread] = []
        self._tokenizers: list[threading.Thread] = []
        self._to_tokenize: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Guards the per-request bookkeeping when several workers finish parts of one request.
        self._rows = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- state -------------------------------------------------------------------------------
    @property
    def queued_texts(self) -> int:
        """Texts admitted and not yet in a batch (tokenizing or queued)."""
        return self._counters.waiting_texts

    @property
    def inflight_requests(self) -> int:
        return self._counters.inflight_requests

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads) and not self._stopping

    def retry_after_s(self) -> int:
        rate = self._counters.texts_per_s
        if rate <= 0:
            return 1
        return max(1, min(60, math.ceil(self._counters.waiting_texts / rate)))

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the threads; call from the event loop that will await submit()."""
        if self._threads:
            raise RuntimeError("batcher already started")
        self._loop = asyncio.get_running_loop()
        for i in range(self.tokenizer_threads):
            thread = threading.Thread(
                target=self._tokenize_loop, name=f"tokenizer-{i}", daemon=True
            )
            self._tokenizers.append(thread)
            thread.start()
        for i in range(self.workers):
            name = self._name if self.workers == 1 else f"{self._name}-{i}"
            thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    async def stop(self, timeout_s: float = 30.0) -> bool:
        """Refuse new work, finish everything admitted, stop the threads. True if it finished."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
        finished = not any(thread.is_alive() for thread in self._threads)
        if not finished:
            log.warning("inference worker still busy after %.1f s; abandoning it", timeout_s)
            self._fail_queued(ShuttingDown())
        for _ in self._tokenizers:
            self._to_tokenize.put(None)
        return finished

    # ---- the request side (event loop) ---------------------------------------------------------
    async def submit(self, texts: Sequence[str], *, truncate: bool = True) -> EmbedResult:
        """Tokenize and embed the texts; rows come back in the order of `texts`.

        Raises QueueFull or ShuttingDown at once; TextTooLong (truncate=False),
        TokenizationError or InferenceError when that step fails for this request."""
        if not texts:
            raise ValueError("submit() needs at least one text")
        loop = self._loop
        if loop is None:
            raise RuntimeError("batcher not started")
        n = len(texts)
        job = _Job(future=loop.create_future(), texts=texts, truncate=truncate, n=n, remaining=n)
        counters = self._counters
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            waiting = counters.waiting_texts
            if waiting + n > self.max_queue:
                raise QueueFull(waiting, self.max_queue, self.retry_after_s())
            counters.tokenizing_texts += n
            counters.inflight_requests += 1
            counters.peak_texts = max(counters.peak_texts, counters.texts_in_server)
        self._to_tokenize.put(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.abandoned = True  # the tokenizer and the workers skip its texts
            raise
        finally:
            with self._cond:
                counters.inflight_requests -= 1

    # ---- the tokenizer threads -------------------------------------------------------------------
    def _tokenize_loop(self) -> None:
        pending = self._to_tokenize
        while (job := pending.get()) is not None:
            # Every request waiting now, in one tokenizer call: one hand-off, one lock.
            jobs = [job]
            with contextlib.suppress(queue.Empty):
                while len(jobs) < TOKENIZE_JOBS_PER_CALL:
                    more = pending.get_nowait()
                    if more is None:
                        pending.put(None)  # stop after this round
                        break
                    jobs.append(more)
            self._tokenize_jobs(jobs)

    def _tokenize_jobs(self, jobs: list[_Job]) -> None:
        """Tokenize requests' texts and queue them, failing the requests whose texts fail."""
        live = [job for job in jobs if not job.abandoned]
        failures: list[tuple[_Job, Exception]] = []
        started = time.perf_counter()
        try:
            items = self._tokenize([text for job in live for text in job.texts]) if live else []
            if len(items) != sum(job.n for job in live):
                raise TokenizationError(f"the tokenizer returned {len(items)} results")
        except Exception as exc:
            if len(jobs) > 1:  # find the request at fault: each on its own
                for job in jobs:
                    self._tokenize_jobs([job])
                return
            if not isinstance(exc, BatcherError):
                log.exception("tokenization failed")
            error = exc if isinstance(exc, BatcherError) else TokenizationError(repr(exc))
            failures = [(job, error) for job in live]
            live = []
        elapsed = time.perf_counter() - started
        offset = 0
        for job in live:
            job.tokenized = items[offset : offset + job.n]
            job.tokenization_s = elapsed
            offset += job.n
            # Summed here, off the event loop, for the response and its headers.
            job.prompt_tokens = sum(item.n_tokens for item in job.tokenized)
            job.truncated = [item.truncated for item in job.tokenized]
            if not job.truncate and any(job.truncated):
                failures.append(
                    (job, TextTooLong(job.truncated.index(True), self.max_seq_length or 0))
                )
        failed = {id(job) for job, _ in failures}
        counters = self._counters
        with self._cond:
            now = time.perf_counter()
            for job in jobs:
                counters.tokenizing_texts -= job.n
                if job.abandoned or id(job) in failed:
                    continue
                job.enqueued_at = now
                self._queue.extend(_Entry(job, i, item) for i, item in enumerate(job.tokenized))
                counters.queued_texts += job.n
                counters.queued_tokens += job.prompt_tokens
                counters.last_queued_at = now
            # All: a worker may be gathering while another waits for the queue to fill.
            self._cond.notify_all()
        if failures:
            self._post(lambda: _fail(failures))

    # ---- the worker threads ----------------------------------------------------------------------
    def _share(self) -> int:
        """Texts a free worker should wait for: its part of the recent load (lock held)."""
        share = int(self._counters.load_texts / (self.workers + 1) + 0.5)
        return max(1, min(self.max_batch_texts, share))

    def _gather(self) -> float:
        """Wait, while it is worth it, for the queue to hold this worker's share (lock held).
        Returns the seconds waited."""
        counters = self._counters
        started = time.perf_counter()
        budget = self.max_batch_wait_s
        if counters.batches:
            budget = min(budget, GATHER_FRACTION * counters.batch_s)
        deadline = started + budget
        now = started
        while not self._stopping and now < deadline:
            if (
                counters.queued_texts >= self._share()
                or counters.queued_tokens >= self.max_batch_tokens
            ):
                break
            if counters.tokenizing_texts:
                timeout = deadline - now
            elif counters.texts_in_server >= counters.load_texts:
                break  # every text the load estimate expects is here already
            else:
                quiet_at = max(counters.last_queued_at, started) + self.arrival_gap_s
                if now >= quiet_at:
                    break
                timeout = min(deadline, quiet_at) - now
            self._cond.wait(timeout)
            now = time.perf_counter()
        return now - started

    def _take_window(self) -> list[_Entry]:
        """Pop up to one batch worth of queued texts, in arrival order (lock held). A window is
        the larger of the share and an even split of the queue over the workers, so that free
        workers split a backlog instead of one taking it all; but it leaves no remainder
        smaller than a share, which would only make a batch too small to be worth it."""
        counters = self._counters
        share = self._share()
        limit = max(share, math.ceil(counters.queued_texts / self.workers))
        if counters.queued_texts - limit < share:
            limit = counters.queued_texts  # what would be left is too little for a batch
        limit = min(self.max_batch_texts, limit)
        window: list[_Entry] = []
        tokens = 0
        entries = self._queue
        while entries and len(window) < limit:
            entry = entries[0]
            job = entry.job
            n_tokens = entry.item.n_tokens
            skip = job.abandoned or job.failed
            if window and not skip and tokens + n_tokens > self.max_batch_tokens:
                break
            entries.popleft()
            counters.queued_texts -= 1
            counters.queued_tokens -= n_tokens
            if skip:
                continue
            window.append(entry)
            tokens += n_tokens
        # The load estimate: the peak since the last window, followed at once when it rises.
        peak = counters.peak_texts
        if peak >= counters.load_texts:
            counters.load_texts = float(peak)
        else:
            counters.load_texts = LOAD_DECAY * counters.load_texts + (1 - LOAD_DECAY) * peak
        counters.computing_texts += len(window)
        counters.peak_texts = counters.texts_in_server
        return window

    def _next_window(self) -> tuple[list[_Entry], float] | None:
        """Block until there is work, gather, take a window; None once stopping and drained."""
        cond = self._cond
        counters = self._counters
        with cond:
            while True:
                while not self._queue or self._gathering:
                    if self._stopping and not self._queue and not counters.tokenizing_texts:
                        return None
                    cond.wait()
                gathered_s = 0.0
                if self.max_batch_wait_s > 0 and not self._stopping:
                    self._gathering = True
                    try:
                        gathered_s = self._gather()
                    finally:
                        self._gathering = False
                window = self._take_window()
                cond.notify_all()  # another free worker may take the rest, or gather next
                if window:
                    counters.busy_workers += 1
                    return window, gathered_s

    def _run(self) -> None:
        counters = self._counters
        while (taken := self._next_window()) is not None:
            window, gathered_s = taken
            try:
                lengths = [entry.item.n_tokens for entry in window]
                for indices in plan_batches(
                    lengths, self.max_batch_tokens, self.max_batch_texts, self._overhead
                ):
                    batch = [window[i] for i in indices]
                    reply = None
                    try:
                        reply = self._execute(batch, gathered_s)
                    finally:
                        # Before the answers go out: their clients may send again at once, and
                        # a text must not count twice in the load estimate.
                        with self._cond:
                            counters.computing_texts -= len(batch)
                    if reply is not None:
                        self._post(reply)
                    gathered_s = 0.0
            finally:
                with self._cond:
                    counters.busy_workers -= 1

    def _execute(self, batch: list[_Entry], gathered_s: float) -> Callable[[], None] | None:
        """Run one batch; returns the callback that answers its requests on the event loop."""
        batch = [entry for entry in batch if not (entry.job.failed or entry.job.abandoned)]
        if not batch:
            return None
        started = time.perf_counter()
        jobs: dict[int, _Job] = {}
        with self._rows:
            for entry in batch:
                job = entry.job
                if id(job) not in jobs:
                    jobs[id(job)] = job
                    if job.batches == 0:
                        job.started_at = started
                    job.batches += 1
                    job.batch_texts = max(job.batch_texts, len(batch))
        items = [entry.item for entry in batch]
        try:
            vectors = self._embed(items)
            if vectors.ndim != 2 or vectors.shape[0] != len(items):
                raise InferenceError(
                    f"runtime returned shape {vectors.shape} for a batch of {len(items)} texts"
                )
        except Exception as exc:
            log.exception("inference failed for a batch of %d texts", len(items))
            error = exc if isinstance(exc, InferenceError) else InferenceError(repr(exc))
            failed = list(jobs.values())
            with self._rows:
                for job in failed:
                    job.failed = True
            return lambda: _fail([(job, error) for job in failed])
        finished = time.perf_counter()
        seconds = finished - started
        done: list[tuple[_Job, EmbedResult]] = []
        with self._rows:
            for row, entry in enumerate(batch):
                job = entry.job
                if job.vectors is None:
                    job.vectors = np.empty((job.n, vectors.shape[1]), dtype=np.float32)
                job.vectors[entry.index] = vectors[row]
                job.remaining -= 1
                if job.remaining == 0:
                    done.append(
                        (
                            job,
                            EmbedResult(
                                vectors=job.vectors,
                                prompt_tokens=job.prompt_tokens,
                                truncated=job.truncated,
                                tokenization_s=job.tokenization_s,
                                queue_s=job.started_at - job.enqueued_at,
                                inference_s=finished - job.started_at,
                                batches=job.batches,
                                batch_texts=job.batch_texts,
                            ),
                        )
                    )
        counters = self._counters
        rate = len(items) / seconds if seconds > 0 else 0.0
        with self._cond:
            first = counters.batches == 0
            counters.texts_per_s = rate if first else 0.8 * counters.texts_per_s + 0.2 * rate
            counters.batch_s = seconds if first else 0.8 * counters.batch_s + 0.2 * seconds
            counters.batches += 1
        if self._on_batch is not None:
            longest = max(item.n_tokens for item in items)
            stats = BatchStats(
                texts=len(items),
                padded_tokens=longest * len(items),
                real_tokens=sum(item.n_tokens for item in items),
                seconds=seconds,
                gathered_s=gathered_s,
            )
            try:
                self._on_batch(stats)
            except Exception:
                log.exception("on_batch callback failed")
        # Answered after the metrics, so a client that sees its answer also sees them.
        return (lambda: _resolve(done)) if done else None

    def _post(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed since the check
            loop.call_soon_threadsafe(callback)

    def _fail_queued(self, error: Exception) -> None:
        """Fail every request still waiting: queued, or not yet tokenized."""
        with self._cond:
            jobs = {id(e.job): e.job for e in self._queue}
            self._queue.clear()
            self._counters.queued_texts = 0
            self._counters.queued_tokens = 0
            with contextlib.suppress(queue.Empty):
                while (job := self._to_tokenize.get_nowait()) is not None:
                    jobs[id(job)] = job
                    job.abandoned = True  # a tokenizer busy with it now drops it
        failed = list(jobs.values())
        for job in failed:
            job.failed = True
        if self._loop is not None and not self._loop.is_closed():
            _fail([(job, error) for job in failed])


def _resolve(done: list[tuple[_Job, EmbedResult]]) -> None:
    for job, result in done:
        if not job.future.done():
            job.future.set_result(result)


def _fail(failures: list[tuple[_Job, Exception]]) -> None:
    for job, error in failures:
        if not job.future.done():
            job.future.set_exception(error)
