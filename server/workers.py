"""The batcher's threads: tokenizers, which turn requests into queued tokens, and inference
workers, which take windows of the queue, cut them into batches and compute them.

- A thread hands results to the event loop with one call_soon_threadsafe per batch (or per
  tokenizer call); the loop answers the requests.
- An inference error fails only the requests whose texts caused it: a failed batch that held
  several requests is computed again request by request, so the others are still answered.
- A worker thread that dies (an error outside any batch) is reported: the queue refuses new
  work from then on and, with no worker left, fails what it held; /health says why.
- ONNX Runtime, OpenVINO and PyTorch release the GIL while they compute, so plain threads run
  batches in parallel on one shared session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from server import batch_policy
from server.jobs import (
    BatcherError,
    BatchStats,
    EmbedFn,
    Entry,
    InferenceError,
    Job,
    TextTooLong,
    TokenizationError,
    TokenizeFn,
    WorkerFailed,
)
from server.work_queue import WorkQueue

log = logging.getLogger(__name__)

# Requests tokenized together by one tokenizer call, at most.
TOKENIZE_JOBS_PER_CALL = 64

Outcome = tuple[list[Entry], np.ndarray | BaseException]


class Threads:
    def __init__(
        self,
        work: WorkQueue,
        embed: EmbedFn,
        tokenize: TokenizeFn,
        *,
        workers: int,
        tokenizer_threads: int,
        max_seq_length: int | None,
        batch_overhead_tokens: int,
        on_batch: Callable[[BatchStats], None] | None,
        name: str,
    ) -> None:
        self._work = work
        self._embed = embed
        self._tokenize = tokenize
        self._workers = workers
        self._tokenizer_threads = tokenizer_threads
        self._max_seq_length = max_seq_length
        self._overhead = batch_overhead_tokens
        self._on_batch = on_batch
        self._name = name
        self._to_tokenize: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.inference: list[threading.Thread] = []
        self.tokenizers: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.inference:
            raise RuntimeError("batcher already started")
        self._loop = loop
        for i in range(self._tokenizer_threads):
            thread = threading.Thread(target=self._tokenizer, name=f"tokenizer-{i}", daemon=True)
            self.tokenizers.append(thread)
            thread.start()
        for i in range(self._workers):
            name = self._name if self._workers == 1 else f"{self._name}-{i}"
            thread = threading.Thread(
                target=self._worker, args=(f"inference worker {name}",), name=name, daemon=True
            )
            self.inference.append(thread)
            thread.start()

    def tokenize(self, job: Job) -> None:
        self._to_tokenize.put(job)

    def stop_tokenizers(self) -> None:
        for _ in self.tokenizers:
            self._to_tokenize.put(None)

    def untokenized(self) -> list[Job]:
        """Take every job still waiting for a tokenizer (a tokenizer busy with one drops it
        once the caller marks it abandoned)."""
        jobs = []
        with contextlib.suppress(queue.Empty):
            while (job := self._to_tokenize.get_nowait()) is not None:
                jobs.append(job)
        return jobs

    def post(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed since the check
            loop.call_soon_threadsafe(callback)

    # ---- tokenizers ----------------------------------------------------------------------------
    def _tokenizer(self) -> None:
        pending = self._to_tokenize
        jobs: list[Job] = []
        try:
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
                jobs = []
        except BaseException as exc:  # the thread is lost: say so, fail what it held
            me = threading.current_thread()
            alive = sum(1 for t in self.tokenizers if t is not me and t.is_alive())
            held = jobs + ([] if alive else self.untokenized())
            self._work.tokenized(held, {id(job) for job in held})  # none will be queued
            self._thread_died(me.name, exc, held)

    def _tokenize_jobs(self, jobs: list[Job]) -> None:
        """Tokenize requests' texts and queue them, failing the requests whose texts fail."""
        live = [job for job in jobs if not job.abandoned]
        failures: list[tuple[Job, BaseException]] = []
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
            job.truncated = [
                item.truncated or cut for item, cut in zip(job.tokenized, job.cut, strict=True)
            ]
            if not job.truncate and any(job.truncated):
                index = job.truncated.index(True)
                reason = f"is longer than the model's {self._max_seq_length} tokens"
                failures.append((job, TextTooLong(index, reason)))
        self._work.tokenized(jobs, {id(job) for job, _ in failures})
        if failures:
            self.post(lambda: _fail(failures))

    # ---- inference workers ---------------------------------------------------------------------
    def _worker(self, name: str) -> None:
        window: list[Entry] = []
        try:
            while (taken := self._work.next_window()) is not None:
                window, gathered_s = taken
                lengths = [entry.item.n_tokens for entry in window]
                for indices in batch_policy.plan_batches(
                    lengths, self._work.max_batch_tokens, self._work.max_batch_texts, self._overhead
                ):
                    self._compute([window[i] for i in indices], gathered_s)
                    gathered_s = 0.0
                window = []
        except BaseException as exc:  # the thread is lost: say so, fail what it held
            me = threading.current_thread()
            alive = sum(1 for t in self.inference if t is not me and t.is_alive())
            self._thread_died(name, exc, [entry.job for entry in window], queue_lost=not alive)

    def _thread_died(
        self, name: str, exc: BaseException, held: list[Job], *, queue_lost: bool = False
    ) -> None:
        """A tokenizer or inference thread ended on an error outside any request: the queue
        refuses new work from now on (/health says why); the jobs the thread held fail, and
        so does the queue when no inference worker is left to drain it."""
        reason = f"{name} died: {type(exc).__name__}: {exc}"
        log.critical(reason, exc_info=exc)
        jobs = self._work.worker_died(reason, drain=queue_lost) + held
        error = WorkerFailed(reason)
        self.post(lambda: _fail([(job, error) for job in jobs]))

    def _compute(self, batch: list[Entry], gathered_s: float) -> None:
        """Run one batch (its live texts) and post the answers to the event loop."""
        live = [entry for entry in batch if not entry.job.done]
        started = time.perf_counter()
        outcomes = self._embed_isolating(live) if live else []
        finished = time.perf_counter()
        succeeded = all(isinstance(result, np.ndarray) for _, result in outcomes)
        # Before the answers go out: their clients may send again at once.
        self._work.computed(len(batch), finished - started if live and succeeded else 0.0)
        if not outcomes:
            return
        if succeeded and self._on_batch is not None:
            self._report(live, finished - started, gathered_s)
        timing = (started, finished, len(live))
        # Answered after the metrics, so a client that sees its answer also sees them.
        self.post(lambda: _answer(outcomes, timing))

    def _embed_isolating(self, batch: list[Entry]) -> list[Outcome]:
        """The batch's vectors; if it fails and holds several requests, each request's texts
        again on their own, so that only the request at fault gets the error."""
        try:
            return [(batch, self._embed_entries(batch))]
        except Exception as exc:
            by_job: dict[int, list[Entry]] = {}
            for entry in batch:
                by_job.setdefault(id(entry.job), []).append(entry)
            if len(by_job) == 1:
                log.exception("inference failed for a batch of %d texts", len(batch))
                return [(batch, _inference_error(exc))]
        outcomes: list[Outcome] = []
        for entries in by_job.values():
            try:
                outcomes.append((entries, self._embed_entries(entries)))
            except Exception as exc:
                log.exception("inference failed for a request of %d texts", len(entries))
                outcomes.append((entries, _inference_error(exc)))
        return outcomes

    def _embed_entries(self, entries: list[Entry]) -> np.ndarray:
        vectors = self._embed([entry.item for entry in entries])
        if vectors.ndim != 2 or vectors.shape[0] != len(entries):
            raise InferenceError(
                f"runtime returned shape {vectors.shape} for a batch of {len(entries)} texts"
            )
        return vectors

    def _report(self, batch: list[Entry], seconds: float, gathered_s: float) -> None:
        assert self._on_batch is not None
        lengths = [entry.item.n_tokens for entry in batch]
        stats = BatchStats(
            texts=len(batch),
            padded_tokens=max(lengths) * len(batch),
            real_tokens=sum(lengths),
            seconds=seconds,
            gathered_s=gathered_s,
        )
        try:
            self._on_batch(stats)
        except Exception:
            log.exception("on_batch callback failed")


def _inference_error(exc: Exception) -> InferenceError:
    return exc if isinstance(exc, InferenceError) else InferenceError(repr(exc))


def _answer(outcomes: list[Outcome], timing: tuple[float, float, int]) -> None:
    """Event loop: hand each request its rows, or its error."""
    for entries, result in outcomes:
        if isinstance(result, BaseException):
            for job in {id(entry.job): entry.job for entry in entries}.values():
                job.fail(result)
            continue
        rows: dict[int, tuple[Job, list[int], list[int]]] = {}
        for row, entry in enumerate(entries):
            _, positions, indices = rows.setdefault(id(entry.job), (entry.job, [], []))
            positions.append(row)
            indices.append(entry.index)
        for job, positions, indices in rows.values():
            job.deliver(result[positions], indices, timing)


def _fail(failures: list[tuple[Job, BaseException]]) -> None:
    for job, error in failures:
        job.fail(error)
