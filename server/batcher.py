"""Dynamic batching: requests enqueue their tokenized texts; one inference worker thread drains
the queue into length-sorted, token-budgeted batches and hands each request its own rows.

- The worker is a plain thread (ONNX Runtime and PyTorch release the GIL while they compute).
  It blocks on a condition variable when the queue is empty, so an idle server never waits on a
  timer, and it starts the next batch the moment the previous one finishes, without a round
  trip through the event loop.
- Texts of concurrent requests share batches. The worker takes a window of queued texts in
  arrival order (at most one batch worth), sorts it by length and cuts it into batches that
  minimise padded tokens plus a per-batch overhead, within max_batch_tokens (texts x longest)
  and max_batch_texts.
- Results go back to each request's asyncio future through one call_soon_threadsafe per batch.
  An exception in a batch fails exactly the requests that had a text in that batch.
- The queue is bounded (texts waiting): submit() raises QueueFull at once beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from server.runtime.base import TokenizedText

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[TokenizedText]], np.ndarray]


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


class InferenceError(BatcherError):
    """The runtime raised while computing a batch that held one of this request's texts."""


@dataclass(frozen=True, slots=True)
class BatchStats:
    texts: int
    padded_tokens: int
    real_tokens: int
    seconds: float


@dataclass(frozen=True, slots=True)
class EmbedResult:
    vectors: np.ndarray  # (texts, dim) float32, in the order submitted
    queue_s: float  # enqueue -> start of the first batch holding one of the texts
    inference_s: float  # start of the first batch -> end of the last one
    batches: int  # how many batches the texts were spread over
    batch_texts: int  # texts in the largest of those batches (shared with other requests)


@dataclass(slots=True, eq=False)
class _Job:
    future: asyncio.Future[EmbedResult]
    n: int
    enqueued_at: float
    remaining: int
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
    queued_texts: int = 0
    inflight_requests: int = 0
    texts_per_s: float = 0.0  # EWMA of worker throughput, for Retry-After
    batches: int = 0


class Batcher:
    def __init__(
        self,
        embed: EmbedFn,
        *,
        max_batch_tokens: int,
        max_batch_texts: int,
        max_queue: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        batch_overhead_tokens: int = 8,
        workers: int = 1,
        name: str = "inference-worker",
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._embed = embed
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._overhead = batch_overhead_tokens
        self._name = name
        self.workers = workers
        self._queue: deque[_Entry] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._counters = _Counters()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        # Guards the per-request bookkeeping when several workers finish parts of one request.
        self._rows = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- state -------------------------------------------------------------------------------
    @property
    def queued_texts(self) -> int:
        return self._counters.queued_texts

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
        return max(1, min(60, math.ceil(self._counters.queued_texts / rate)))

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers; call from the event loop that will await submit()."""
        if self._threads:
            raise RuntimeError("batcher already started")
        self._loop = asyncio.get_running_loop()
        for i in range(self.workers):
            name = self._name if self.workers == 1 else f"{self._name}-{i}"
            thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    async def stop(self, timeout_s: float = 30.0) -> bool:
        """Refuse new work, finish everything queued, stop the worker. True if it finished."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            log.warning("inference worker still busy after %.1f s; abandoning it", timeout_s)
            self._fail_queued(ShuttingDown())
            return False
        return True

    # ---- the request side (event loop) ---------------------------------------------------------
    async def submit(self, items: Sequence[TokenizedText]) -> EmbedResult:
        """Embed the texts; rows come back in the order of `items`."""
        if not items:
            raise ValueError("submit() needs at least one text")
        loop = self._loop
        if loop is None:
            raise RuntimeError("batcher not started")
        future: asyncio.Future[EmbedResult] = loop.create_future()
        now = time.perf_counter()
        job = _Job(future=future, n=len(items), enqueued_at=now, remaining=len(items))
        counters = self._counters
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            if counters.queued_texts + len(items) > self.max_queue:
                raise QueueFull(counters.queued_texts, self.max_queue, self.retry_after_s())
            self._queue.extend(_Entry(job, i, item) for i, item in enumerate(items))
            counters.queued_texts += len(items)
            counters.inflight_requests += 1
            self._cond.notify()
        try:
            return await future
        except asyncio.CancelledError:
            job.abandoned = True  # the worker drops its queued texts
            raise
        finally:
            with self._cond:
                counters.inflight_requests -= 1

    # ---- the worker thread ---------------------------------------------------------------------
    def _take_window(self) -> list[_Entry]:
        """Pop up to one batch worth of queued texts, in arrival order (lock held)."""
        window: list[_Entry] = []
        tokens = 0
        queue = self._queue
        while queue and len(window) < self.max_batch_texts:
            entry = queue[0]
            job = entry.job
            if job.abandoned or job.failed:
                queue.popleft()
                self._counters.queued_texts -= 1
                continue
            n_tokens = entry.item.n_tokens
            if window and tokens + n_tokens > self.max_batch_tokens:
                break
            queue.popleft()
            self._counters.queued_texts -= 1
            window.append(entry)
            tokens += n_tokens
        return window

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:  # stopping and drained
                    return
                window = self._take_window()
            if not window:
                continue
            lengths = [entry.item.n_tokens for entry in window]
            for indices in plan_batches(
                lengths, self.max_batch_tokens, self.max_batch_texts, self._overhead
            ):
                self._execute([window[i] for i in indices])

    def _execute(self, batch: list[_Entry]) -> None:
        batch = [entry for entry in batch if not (entry.job.failed or entry.job.abandoned)]
        if not batch:
            return
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
            self._post(lambda: _fail(failed, error))
            return
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
                                queue_s=job.started_at - job.enqueued_at,
                                inference_s=finished - job.started_at,
                                batches=job.batches,
                                batch_texts=job.batch_texts,
                            ),
                        )
                    )
        counters = self._counters
        rate = len(items) / seconds if seconds > 0 else 0.0
        counters.texts_per_s = (
            rate if counters.batches == 0 else 0.8 * counters.texts_per_s + 0.2 * rate
        )
        counters.batches += 1
        if self._on_batch is not None:
            longest = max(item.n_tokens for item in items)
            stats = BatchStats(
                texts=len(items),
                padded_tokens=longest * len(items),
                real_tokens=sum(item.n_tokens for item in items),
                seconds=seconds,
            )
            try:
                self._on_batch(stats)
            except Exception:
                log.exception("on_batch callback failed")
        if done:  # after the metrics, so a client that sees its answer also sees them
            self._post(lambda: _resolve(done))

    def _post(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed since the check
            loop.call_soon_threadsafe(callback)

    def _fail_queued(self, error: Exception) -> None:
        with self._cond:
            jobs = {id(e.job): e.job for e in self._queue}
            self._queue.clear()
            self._counters.queued_texts = 0
        failed = list(jobs.values())
        for job in failed:
            job.failed = True
        if self._loop is not None and not self._loop.is_closed():
            _fail(failed, error)


def _resolve(done: list[tuple[_Job, EmbedResult]]) -> None:
    for job, result in done:
        if not job.future.done():
            job.future.set_result(result)


def _fail(jobs: list[_Job], error: Exception) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
