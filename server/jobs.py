"""A request's journey through the batcher, and the errors it may end with.

A Job is one request. Its fields have one writer each: the request side fills the texts, a
tokenizer thread the tokens (before the job is queued, which publishes them), and the event
loop assembles the rows the workers hand back (delivery runs on the loop, so no lock)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from server.runtime.base import TokenizedText

EmbedFn = Callable[[list[TokenizedText]], np.ndarray]
TokenizeFn = Callable[[list[str]], list[TokenizedText]]


class BatcherError(Exception):
    """Base class of the errors a request may end with."""


class QueueFull(BatcherError):
    def __init__(self, what: str, waiting: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"queue full: {waiting} {what} waiting (limit {limit})")
        self.what = what
        self.waiting = waiting
        self.limit = limit
        self.retry_after_s = retry_after_s


class ShuttingDown(BatcherError):
    def __init__(self) -> None:
        super().__init__("the server is shutting down")


class WorkerFailed(BatcherError):
    """An inference worker thread died: the server cannot be trusted to answer."""


class TextTooLong(BatcherError):
    """A text is longer than the model can take and the request said not to truncate."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class TokenizationError(BatcherError):
    """The tokenizer raised on one of this request's texts."""


class InferenceError(BatcherError):
    """The runtime raised while computing one of this request's texts."""


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
    truncated: list[bool]  # per text: cut to what the model takes
    tokenization_s: float
    queue_s: float  # queued -> start of the first batch holding one of the texts
    inference_s: float  # start of the first batch -> end of the last one
    batches: int  # how many batches the texts were spread over
    batch_texts: int  # texts in the largest of those batches (shared with other requests)


@dataclass(slots=True, eq=False)
class Job:
    future: asyncio.Future[EmbedResult]
    texts: Sequence[str]  # as the tokenizer sees them: already cut to what the model can use
    cut: Sequence[bool]  # per text: shortened before tokenization
    truncate: bool
    nbytes: int  # UTF-8 bytes of the texts as received, counted against the byte bound
    # The tokenizer thread's, before the job is queued:
    tokenized: list[TokenizedText] = field(default_factory=list)
    prompt_tokens: int = 0
    truncated: list[bool] = field(default_factory=list)
    tokenization_s: float = 0.0
    enqueued_at: float = 0.0
    # The event loop's, as batches come back:
    vectors: np.ndarray | None = None
    remaining: int = 0
    started_at: float = 0.0
    batches: int = 0
    batch_texts: int = 0
    # Set on the loop, read by the threads: skip this job's texts.
    abandoned: bool = False  # the caller went away
    failed: bool = False  # one of its texts failed

    @property
    def n(self) -> int:
        return len(self.texts)

    @property
    def done(self) -> bool:
        return self.abandoned or self.failed

    def fail(self, error: BaseException) -> None:
        """Event loop only."""
        self.failed = True
        if not self.future.done():
            self.future.set_exception(error)

    def deliver(
        self, rows: np.ndarray, indices: Sequence[int], batch: tuple[float, float, int]
    ) -> None:
        """Event loop only: a batch's rows for some of this job's texts."""
        if self.done or self.future.done():
            return
        started, finished, batch_texts = batch
        if self.vectors is None:
            self.remaining = self.n
            self.started_at = started
            if len(indices) == self.n and list(indices) == list(range(self.n)):
                self.vectors = rows.astype(np.float32, copy=False)  # all rows, in order
            else:
                self.vectors = np.empty((self.n, rows.shape[1]), dtype=np.float32)
        if self.vectors is not rows:
            self.vectors[list(indices)] = rows
        self.remaining -= len(indices)
        self.started_at = min(self.started_at, started)
        self.batches += 1
        self.batch_texts = max(self.batch_texts, batch_texts)
        if self.remaining == 0:
            self.future.set_result(
                EmbedResult(
                    vectors=self.vectors,
                    prompt_tokens=self.prompt_tokens,
                    truncated=self.truncated,
                    tokenization_s=self.tokenization_s,
                    queue_s=self.started_at - self.enqueued_at,
                    inference_s=finished - self.started_at,
                    batches=self.batches,
                    batch_texts=self.batch_texts,
                )
            )


@dataclass(slots=True)
class Entry:
    """One text of a job in the queue."""

    job: Job
    index: int
    item: TokenizedText
