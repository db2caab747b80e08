"""The dynamic batcher on a fake runtime: order, own rows, shared batches, error isolation,
queue bound, no idle timer, draining shutdown, and the batch planner."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import numpy as np
import pytest

from server.batcher import Batcher, InferenceError, QueueFull, ShuttingDown, plan_batches
from tests.server.conftest import FakeEmbedder, fake_vector

pytestmark = pytest.mark.anyio


def make_batcher(fake: FakeEmbedder, **kwargs: int) -> Batcher:
    """A started-later batcher over the fake runtime (one worker unless told otherwise)."""
    options = {"max_batch_tokens": 4096, "max_batch_texts": 64, "max_queue": 1000}
    options.update(kwargs)
    return Batcher(fake.embed_tokenized, **options)


async def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


def expected(texts: list[str]) -> np.ndarray:
    return np.stack([fake_vector(t) for t in texts])


async def test_each_request_gets_its_own_rows_in_order(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=7)
    batcher.start()
    rng = random.Random(1)
    requests = [
        [f"request {r} text {i} " + "word " * rng.randint(0, 20) for i in range(rng.randint(1, 9))]
        for r in range(60)
    ]
    results = await asyncio.gather(*(batcher.submit(fake.tokenize(t)) for t in requests))
    for texts, result in zip(requests, results, strict=True):
        assert result.vectors.shape == (len(texts), 16)
        np.testing.assert_array_equal(result.vectors, expected(texts))
    # Every text was embedded exactly once, and batches respected the text limit.
    flat = sorted(t for batch in fake.batches for t in batch)
    assert flat == sorted(" ".join(t.split()) for texts in requests for t in texts)
    assert max(len(b) for b in fake.batches) <= 7
    assert await batcher.stop()


async def test_texts_of_concurrent_requests_share_batches(fake: FakeEmbedder):
    batcher = make_batcher(fake)
    batcher.start()
    fake.gate.clear()
    first = asyncio.create_task(batcher.submit(fake.tokenize(["hold the worker"])))
    await wait_for(fake.entered.is_set)
    # Queued while the worker is busy: all ten must run together in the next batch.
    rest = [asyncio.create_task(batcher.submit(fake.tokenize([f"text {i}"]))) for i in range(10)]
    await wait_for(lambda: batcher.queued_texts == 10)
    fake.gate.set()
    results = await asyncio.gather(first, *rest)
    assert [len(b) for b in fake.batches] == [1, 10]
    assert all(r.batch_texts == 10 for r in results[1:])
    for i, result in enumerate(results[1:]):
        np.testing.assert_array_equal(result.vectors[0], fake_vector(f"text {i}"))
    await batcher.stop()


async def test_a_request_larger_than_a_batch_is_split_and_reassembled(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=4)
    batcher.start()
    texts = [f"t{i} " + "w " * (i % 5) for i in range(10)]
    result = await batcher.submit(fake.tokenize(texts))
    np.testing.assert_array_equal(result.vectors, expected(texts))
    assert result.batches == 3
    assert len(fake.batches) == 3
    await batcher.stop()


async def test_an_error_fails_exactly_the_requests_in_that_batch(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=2)
    batcher.start()
    fake.gate.clear()
    holder = asyncio.create_task(batcher.submit(fake.tokenize(["hold"])))
    await wait_for(fake.entered.is_set)
    # Arrival order fixes the batches (two texts each): [a, FAIL] then [c1, c2] then [d].
    a = asyncio.create_task(batcher.submit(fake.tokenize(["a"])))
    await wait_for(lambda: batcher.queued_texts == 1)
    b = asyncio.create_task(batcher.submit(fake.tokenize(["FAIL"])))
    await wait_for(lambda: batcher.queued_texts == 2)
    c = asyncio.create_task(batcher.submit(fake.tokenize(["c1", "c2"])))
    await wait_for(lambda: batcher.queued_texts == 4)
    d = asyncio.create_task(batcher.submit(fake.tokenize(["d"])))
    await wait_for(lambda: batcher.queued_texts == 5)
    fake.gate.set()
    outcomes = await asyncio.gather(holder, a, b, c, d, return_exceptions=True)
    assert [sorted(batch) for batch in fake.batches] == [
        ["hold"],
        ["FAIL", "a"],
        ["c1", "c2"],
        ["d"],
    ]
    assert not isinstance(outcomes[0], BaseException)
    assert isinstance(outcomes[1], InferenceError) and "boom" in str(outcomes[1])
    assert isinstance(outcomes[2], InferenceError)
    np.testing.assert_array_equal(outcomes[3].vectors, expected(["c1", "c2"]))
    np.testing.assert_array_equal(outcomes[4].vectors, expected(["d"]))
    # The worker survived: later requests are served.
    again = await batcher.submit(fake.tokenize(["after the error"]))
    np.testing.assert_array_equal(again.vectors, expected(["after the error"]))
    await batcher.stop()


async def test_a_request_spread_over_batches_fails_if_any_of_them_fails(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=2)
    batcher.start()
    with pytest.raises(InferenceError):
        await batcher.submit(fake.tokenize(["x1", "x2", "FAIL", "x4", "x5"]))
    ok = await batcher.submit(fake.tokenize(["y"]))
    assert ok.vectors.shape == (1, 16)
    await batcher.stop()


async def test_the_queue_is_bounded_and_recovers(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_queue=6, max_batch_texts=64)
    batcher.start()
    fake.gate.clear()
    holder = asyncio.create_task(batcher.submit(fake.tokenize(["hold"])))
    await wait_for(fake.entered.is_set)
    admitted = [
        asyncio.create_task(batcher.submit(fake.tokenize([f"q{i}", "z"]))) for i in range(3)
    ]
    await wait_for(lambda: batcher.queued_texts == 6)
    started = time.perf_counter()
    with pytest.raises(QueueFull) as info:
        await batcher.submit(fake.tokenize(["one too many"]))
    assert time.perf_counter() - started < 0.5  # refused at once, not after a wait
    assert info.value.retry_after_s >= 1 and info.value.limit == 6
    assert batcher.queued_texts == 6  # the refused request left no trace
    fake.gate.set()
    results = await asyncio.gather(holder, *admitted)
    assert all(r.vectors.shape[0] in (1, 2) for r in results)
    late = await batcher.submit(fake.tokenize(["recovered"]))
    np.testing.assert_array_equal(late.vectors, expected(["recovered"]))
    assert batcher.queued_texts == 0 and batcher.inflight_requests == 0
    await batcher.stop()


async def test_an_idle_batcher_starts_at_once_without_a_timer(fake: FakeEmbedder):
    batcher = make_batcher(fake)
    batcher.start()
    waits = []
    for i in range(30):
        result = await batcher.submit(fake.tokenize([f"alone {i}"]))
        waits.append(result.queue_s)
    # A batcher that waits on a timer for more work would show >= its timeout here.
    assert statistics.median(waits) < 0.002, waits
    await batcher.stop()


async def test_stop_drains_queued_work_then_refuses(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=2)
    batcher.start()
    fake.gate.clear()
    tasks = [asyncio.create_task(batcher.submit(fake.tokenize([f"s{i}"]))) for i in range(5)]
    await wait_for(fake.entered.is_set)
    stopping = asyncio.create_task(batcher.stop(timeout_s=10))
    await asyncio.sleep(0.05)
    with pytest.raises(ShuttingDown):
        await batcher.submit(fake.tokenize(["too late"]))
    fake.gate.set()
    assert await stopping
    results = await asyncio.gather(*tasks)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.vectors[0], fake_vector(f"s{i}"))


async def test_texts_of_a_cancelled_request_are_skipped(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=1)
    batcher.start()
    fake.gate.clear()
    holder = asyncio.create_task(batcher.submit(fake.tokenize(["hold"])))
    await wait_for(fake.entered.is_set)
    doomed = asyncio.create_task(batcher.submit(fake.tokenize(["gone1", "gone2"])))
    kept = asyncio.create_task(batcher.submit(fake.tokenize(["kept"])))
    await wait_for(lambda: batcher.queued_texts == 3)
    doomed.cancel()
    await asyncio.sleep(0.01)
    fake.gate.set()
    await holder
    await kept
    assert fake.batches == [["hold"], ["kept"]]
    assert batcher.queued_texts == 0 and batcher.inflight_requests == 0
    await batcher.stop()


async def test_several_workers_run_batches_concurrently_and_keep_rows_straight(fake):
    batcher = make_batcher(fake, max_batch_texts=3, workers=3)
    batcher.start()
    fake.delay_s = 0.01
    requests = [[f"w{r} t{i}" for i in range(1 + r % 7)] for r in range(40)]
    results = await asyncio.gather(*(batcher.submit(fake.tokenize(t)) for t in requests))
    for texts, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result.vectors, expected(texts))
    assert fake.max_running > 1, "batches never overlapped"
    assert fake.max_running <= 3
    # An error still reaches exactly the requests in the failing batch.
    outcomes = await asyncio.gather(
        batcher.submit(fake.tokenize(["FAIL"])),
        batcher.submit(fake.tokenize(["fine", "also fine", "x", "y"])),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], InferenceError)
    failed_batches = [b for b in fake.batches if "FAIL" in b]
    if any("fine" in b for b in failed_batches):
        assert isinstance(outcomes[1], InferenceError)
    else:
        np.testing.assert_array_equal(
            outcomes[1].vectors, expected(["fine", "also fine", "x", "y"])
        )
    assert await batcher.stop()


async def test_a_runtime_returning_the_wrong_shape_is_an_error():
    batcher = Batcher(
        lambda batch: np.zeros((len(batch) + 1, 4), np.float32),
        max_batch_tokens=100,
        max_batch_texts=8,
        max_queue=8,
    )
    batcher.start()
    fake = FakeEmbedder()
    with pytest.raises(InferenceError, match="shape"):
        await batcher.submit(fake.tokenize(["x"]))
    await batcher.stop()


# ---- the planner --------------------------------------------------------------------------------
def padded(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_plan_covers_every_text_once_within_the_limits():
    rng = random.Random(7)
    for _ in range(200):
        lengths = [rng.randint(1, 256) for _ in range(rng.randint(1, 64))]
        budget = rng.choice([256, 512, 2048, 8192])
        limit = rng.choice([1, 4, 16, 64])
        batches = plan_batches(lengths, budget, limit)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for batch in batches:
            assert len(batch) <= limit
            longest = max(lengths[i] for i in batch)
            assert len(batch) == 1 or len(batch) * longest <= budget


def test_plan_sorts_by_length_to_cut_padding():
    lengths = [200, 10, 12, 198, 11, 9, 201, 10]
    batches = plan_batches(lengths, max_batch_tokens=8192, max_batch_texts=64)
    assert len(batches) == 2
    assert sorted(sorted(lengths[i] for i in b) for b in batches) == [
        [9, 10, 10, 11, 12],
        [198, 200, 201],
    ]
    assert padded(lengths, batches) < 0.5 * len(lengths) * max(lengths)


def test_plan_keeps_uniform_lengths_in_one_batch():
    lengths = [20, 21, 19, 22, 20] * 6
    assert [len(b) for b in plan_batches(lengths, 8192, 64)] == [30]
    assert [len(b) for b in plan_batches(lengths, 8192, 16)] == [16, 14]


def test_plan_gives_an_over_budget_text_its_own_batch():
    assert plan_batches([300, 5], max_batch_tokens=256, max_batch_texts=8) == [[1], [0]]
