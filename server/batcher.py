"""Dynamic batching, as the HTTP layer sees it: admit a request, await its rows.

The parts have one job each: server.work_queue owns admission and the queue (one lock);
server.batch_policy decides batches and gathering (pure functions); server.workers runs the
tokenizer and inference threads; server.jobs is a request's state and the errors it may end
with. This module puts them together and bounds what a request may cost before any of it runs:

- A text is cut to what the model can use (max_seq_length x CHARS_PER_TOKEN characters, at a
  word boundary) before the tokenizer sees it, so one huge text cannot stall the tokenizer; a
  text that long with truncate=false is refused at once. No natural text holds fewer tokens
  than that many characters allow, so for them the cut changes nothing but the time taken.
- Admission counts texts and bytes (as received: a request holds its body until it is
  answered), before tokenization (429 when either bound is reached).
- A caller that goes away (its await cancelled) abandons its texts: the threads skip them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from server.batch_policy import ARRIVAL_GAP_S, plan_batches
from server.jobs import (
    BatcherError,
    BatchStats,
    EmbedFn,
    EmbedResult,
    InferenceError,
    Job,
    QueueFull,
    ShuttingDown,
    TextTooLong,
    TokenizationError,
    TokenizeFn,
    WorkerFailed,
)
from server.work_queue import WorkQueue
from server.workers import Threads

__all__ = [
    "BatchStats",
    "Batcher",
    "BatcherError",
    "EmbedResult",
    "InferenceError",
    "QueueFull",
    "ShuttingDown",
    "TextTooLong",
    "TokenizationError",
    "WorkerFailed",
    "plan_batches",
]

log = logging.getLogger(__name__)

# Characters per token a text may have before it is cut. Tokenizers of natural text average
# 3-6 characters per token, so a cut at 32 keeps every token the model would use.
CHARS_PER_TOKEN = 32
# Where no word boundary lies in the last tenth of the cut, the cut is exact.
_BOUNDARY_SEARCH = 0.1


def cut_text(text: str, limit: int) -> str:
    """The text's first `limit` characters, ending at a word boundary when one is near."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    floor = int(limit * (1 - _BOUNDARY_SEARCH))
    boundary = max(head.rfind(" ", floor), head.rfind("\n", floor))
    return head[:boundary] if boundary > 0 else head


def text_bytes(texts: Sequence[str]) -> int:
    """UTF-8 size of the texts (an ASCII text's length is its size: no encoding needed)."""
    return sum(len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass")) for t in texts)


class Batcher:
    def __init__(
        self,
        embed: EmbedFn,
        tokenize: TokenizeFn,
        *,
        max_batch_tokens: int,
        max_batch_texts: int,
        max_queue: int,
        max_queue_bytes: int = 16 * 1024 * 1024,
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
        self.max_seq_length = max_seq_length
        self.max_text_chars = max_seq_length * CHARS_PER_TOKEN if max_seq_length else None
        self._work = WorkQueue(
            max_texts=max_queue,
            max_bytes=max_queue_bytes,
            max_batch_tokens=max_batch_tokens,
            max_batch_texts=max_batch_texts,
            max_batch_wait_s=max_batch_wait_s,
            arrival_gap_s=arrival_gap_s,
            workers=workers,
        )
        self._threads = Threads(
            self._work,
            embed,
            tokenize,
            workers=workers,
            tokenizer_threads=tokenizer_threads,
            max_seq_length=max_seq_length,
            batch_overhead_tokens=batch_overhead_tokens,
            on_batch=on_batch,
            name=name,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # ---- state ---------------------------------------------------------------------------------
    @property
    def queued_texts(self) -> int:
        """Texts admitted and not yet in a batch (tokenizing or queued)."""
        return self._work.waiting_texts

    @property
    def inflight_requests(self) -> int:
        return self._work.inflight_requests

    @property
    def max_queue(self) -> int:
        return self._work.max_texts

    @property
    def running(self) -> bool:
        return not self._stopping and any(t.is_alive() for t in self._threads.inference)

    @property
    def failure(self) -> str | None:
        """Why the batcher cannot serve (a dead worker thread), or None."""
        if self._work.failure is not None:
            return self._work.failure
        if self._threads.inference and not self._stopping:
            dead = [t.name for t in self._threads.inference if not t.is_alive()]
            if dead:
                return f"inference worker {dead[0]} is not running"
        return None

    def retry_after_s(self) -> int:
        return self._work.retry_after_s()

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the threads; call from the event loop that will await the requests."""
        self._loop = asyncio.get_running_loop()
        self._threads.start(self._loop)

    async def stop(self, timeout_s: float = 30.0) -> bool:
        """Refuse new work, finish everything admitted, stop the threads. True if it finished."""
        self._stopping = True
        self._work.stop()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads.inference:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
        finished = not any(thread.is_alive() for thread in self._threads.inference)
        if not finished:
            log.warning("inference worker still busy after %.1f s; abandoning it", timeout_s)
            jobs = self._work.drain() + self._threads.untokenized()
            error = ShuttingDown()
            for job in jobs:
                job.abandoned = True  # a tokenizer busy with it now drops it
                job.fail(error)
        self._threads.stop_tokenizers()
        return finished

    # ---- the request side (event loop) ---------------------------------------------------------
    def admit(self, texts: Sequence[str], *, truncate: bool = True) -> Job:
        """Admit a request at once or refuse it: QueueFull, ShuttingDown, WorkerFailed, or
        TextTooLong (a text longer than the model can use, with truncate=False)."""
        if not texts:
            raise ValueError("a request needs at least one text")
        loop = self._loop
        if loop is None:
            raise RuntimeError("batcher not started")
        # Bytes as received: the request holds its body until it is answered.
        nbytes = text_bytes(texts)
        limit = self.max_text_chars
        cut = [False] * len(texts)
        if limit is not None:
            for i, text in enumerate(texts):
                if len(text) > limit:
                    if not truncate:
                        raise TextTooLong(
                            i,
                            f"has {len(text):,} characters, more than the {limit:,} the model's "
                            f"{self.max_seq_length} tokens can hold ({CHARS_PER_TOKEN} per "
                            "token)",
                        )
                    cut[i] = True
            if any(cut):
                texts = [cut_text(t, limit) if c else t for t, c in zip(texts, cut, strict=True)]
        job = Job(
            future=loop.create_future(),
            texts=texts,
            cut=cut,
            truncate=truncate,
            nbytes=nbytes,
        )
        self._work.admit(job)
        self._threads.tokenize(job)
        return job

    async def wait(self, job: Job) -> EmbedResult:
        """The job's result; rows come back in the order of its texts. Cancelling the wait (or
        the job's future) abandons the job's texts that are not computed yet."""
        try:
            return await job.future
        except asyncio.CancelledError:
            job.abandoned = True  # the tokenizers and the workers skip its texts
            raise
        finally:
            self._work.release(job)

    async def submit(self, texts: Sequence[str], *, truncate: bool = True) -> EmbedResult:
        """admit() then wait()."""
        return await self.wait(self.admit(texts, truncate=truncate))
