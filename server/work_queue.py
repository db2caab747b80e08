"""Admission and the queue: the one owner of the batcher's shared state, behind one lock.

- Admission counts a request's texts and bytes against the bounds before anything else, so a
  full server refuses (QueueFull, 429) at once, without spending CPU on tokenization. Texts
  count from admission until they are computed; bytes until the request is answered (its texts
  are held that long).
- Tokenized requests join the queue whole; free workers take windows of it (gathering first,
  as server.batch_policy decides) and report each computed batch back.
- A worker blocks on the condition variable while the queue is empty, so an idle server never
  waits on a timer: the first text to arrive wakes it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from server import batch_policy
from server.jobs import Entry, Job, QueueFull, ShuttingDown, WorkerFailed


@dataclass
class _Counters:
    tokenizing_texts: int = 0  # admitted, not yet queued
    queued_texts: int = 0
    queued_tokens: int = 0
    computing_texts: int = 0  # in windows the workers hold
    held_bytes: int = 0  # texts' bytes of the requests in the server
    inflight_requests: int = 0
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


class WorkQueue:
    def __init__(
        self,
        *,
        max_texts: int,
        max_bytes: int,
        max_batch_tokens: int,
        max_batch_texts: int,
        max_batch_wait_s: float,
        arrival_gap_s: float,
        workers: int,
    ) -> None:
        self.max_texts = max_texts
        self.max_bytes = max_bytes
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.max_batch_wait_s = max_batch_wait_s
        self.arrival_gap_s = arrival_gap_s
        self.workers = workers
        self._entries: deque[Entry] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._counters = _Counters()
        self._stopping = False
        self._failure: str | None = None
        self._gathering = False  # one free worker at a time waits for more texts

    # ---- state ---------------------------------------------------------------------------------
    @property
    def waiting_texts(self) -> int:
        """Texts admitted and not yet in a batch (tokenizing or queued)."""
        return self._counters.waiting_texts

    @property
    def inflight_requests(self) -> int:
        return self._counters.inflight_requests

    @property
    def failure(self) -> str | None:
        return self._failure

    def retry_after_s(self) -> int:
        rate = self._counters.texts_per_s
        if rate <= 0:
            return 1
        return max(1, min(60, math.ceil(self._counters.waiting_texts / rate)))

    # ---- the request side ----------------------------------------------------------------------
    def admit(self, job: Job) -> None:
        """Count a request in, or refuse it (QueueFull, ShuttingDown, WorkerFailed) unchanged."""
        counters = self._counters
        with self._cond:
            if self._failure is not None:
                raise WorkerFailed(self._failure)
            if self._stopping:
                raise ShuttingDown()
            waiting = counters.waiting_texts
            if waiting + job.n > self.max_texts:
                raise QueueFull("texts", waiting, self.max_texts, self.retry_after_s())
            if counters.held_bytes + job.nbytes > self.max_bytes:
                raise QueueFull("bytes", counters.held_bytes, self.max_bytes, self.retry_after_s())
            counters.tokenizing_texts += job.n
            counters.held_bytes += job.nbytes
            counters.inflight_requests += 1
            counters.peak_texts = max(counters.peak_texts, counters.texts_in_server)

    def release(self, job: Job) -> None:
        """The request is answered (or gone): its bytes leave the server."""
        with self._cond:
            self._counters.held_bytes -= job.nbytes
            self._counters.inflight_requests -= 1

    # ---- the tokenizer side --------------------------------------------------------------------
    def tokenized(self, jobs: list[Job], refused: set[int]) -> None:
        """Tokenizing -> queued, for every job not abandoned and not in `refused` (ids)."""
        counters = self._counters
        with self._cond:
            now = time.perf_counter()
            for job in jobs:
                counters.tokenizing_texts -= job.n
                if job.abandoned or id(job) in refused:
                    continue
                job.enqueued_at = now
                self._entries.extend(Entry(job, i, item) for i, item in enumerate(job.tokenized))
                counters.queued_texts += job.n
                counters.queued_tokens += job.prompt_tokens
                counters.last_queued_at = now
            # All: a worker may be gathering while another waits for the queue to fill.
            self._cond.notify_all()

    # ---- the worker side -----------------------------------------------------------------------
    def next_window(self) -> tuple[list[Entry], float] | None:
        """Block until there is work, gather, take a window; None once stopping and drained."""
        cond = self._cond
        counters = self._counters
        with cond:
            while True:
                while not self._entries or self._gathering:
                    if self._stopping and not self._entries and not counters.tokenizing_texts:
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
                    return window, gathered_s

    def computed(self, texts: int, seconds: float) -> None:
        """A batch is done (or failed): its texts leave the server's count before the answers
        go out, since their clients may send again at once and a text must not count twice."""
        counters = self._counters
        rate = texts / seconds if seconds > 0 else 0.0
        with self._cond:
            counters.computing_texts -= texts
            if seconds > 0:
                first = counters.batches == 0
                counters.texts_per_s = rate if first else 0.8 * counters.texts_per_s + 0.2 * rate
                counters.batch_s = seconds if first else 0.8 * counters.batch_s + 0.2 * seconds
                counters.batches += 1

    def _gather(self) -> float:
        """Wait, while batch_policy says so, for the queue to hold this worker's share (lock
        held). Returns the seconds waited."""
        counters = self._counters
        started = time.perf_counter()
        budget = batch_policy.gather_budget(
            self.max_batch_wait_s, counters.batch_s, counters.batches
        )
        deadline = started + budget
        now = started
        while not self._stopping:
            wait = batch_policy.gather_wait(
                self._view(),
                now=now,
                started=started,
                deadline=deadline,
                share_texts=self._share(),
                max_batch_tokens=self.max_batch_tokens,
                arrival_gap_s=self.arrival_gap_s,
            )
            if wait is None:
                break
            self._cond.wait(wait)
            now = time.perf_counter()
        return now - started

    def _view(self) -> batch_policy.QueueView:
        counters = self._counters
        return batch_policy.QueueView(
            queued_texts=counters.queued_texts,
            queued_tokens=counters.queued_tokens,
            tokenizing_texts=counters.tokenizing_texts,
            texts_in_server=counters.texts_in_server,
            load_texts=counters.load_texts,
            last_queued_at=counters.last_queued_at,
        )

    def _share(self) -> int:
        return batch_policy.share(self._counters.load_texts, self.workers, self.max_batch_texts)

    def _take_window(self) -> list[Entry]:
        """Pop up to one batch worth of queued texts, in arrival order (lock held)."""
        counters = self._counters
        limit = batch_policy.window_limit(
            counters.queued_texts, self._share(), self.workers, self.max_batch_texts
        )
        window: list[Entry] = []
        tokens = 0
        entries = self._entries
        while entries and len(window) < limit:
            entry = entries[0]
            n_tokens = entry.item.n_tokens
            skip = entry.job.done
            if window and not skip and tokens + n_tokens > self.max_batch_tokens:
                break
            entries.popleft()
            counters.queued_texts -= 1
            counters.queued_tokens -= n_tokens
            if skip:
                continue
            window.append(entry)
            tokens += n_tokens
        counters.load_texts = batch_policy.follow_load(counters.load_texts, counters.peak_texts)
        counters.computing_texts += len(window)
        counters.peak_texts = counters.texts_in_server
        return window

    # ---- lifecycle -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Refuse new work; the workers finish what is queued, then next_window() says None."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def worker_died(self, reason: str, *, drain: bool) -> list[Job]:
        """Refuse new work from now on; with `drain` (no worker is left to compute it), empty
        the queue and return the jobs it held (the caller fails them)."""
        with self._cond:
            self._failure = self._failure or reason
            return self._drain() if drain else []

    def drain(self) -> list[Job]:
        """Empty the queue; returns the jobs it held."""
        with self._cond:
            return self._drain()

    def _drain(self) -> list[Job]:
        jobs = {id(entry.job): entry.job for entry in self._entries}
        self._entries.clear()
        self._counters.queued_texts = 0
        self._counters.queued_tokens = 0
        return list(jobs.values())
