"""The dynamic batcher on a fake runtime: order, own rows, shared batches, error isolation,
queue bound, no idle timer, draining shutdown, and the batch planner."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import numpy as np
import pytest

from server.batcher import (
    Batcher,
    InferenceError,
    QueueFull,
    ShuttingDown,
    TextTooLong,
    TokenizationError,
    plan_batches,
)
from tests.server.conftest import FAKE_MAX_SEQ, FakeEmbedder, fake_vector

pytestmark = pytest.mark.anyio


def make_batcher(fake: FakeEmbedder, **kwargs: float) -> Batcher:
    """A started-later batcher over the fake runtime (one worker unless told otherwise)."""
    options = {"max_batch_tokens": 4096, "max_batch_texts": 64, "max_queue": 1000}
    options.update(kwargs)
    return Batcher(fake.embed_tokenized, fake.tokenize, **options)


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
    results = await asyncio.gather(*(batcher.submit(t) for t in requests))
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
    first = asyncio.create_task(batcher.submit(["hold the worker"]))
    await wait_for(fake.entered.is_set)
    # Queued while the worker is busy: all ten must run together in the next batch.
    rest = [asyncio.create_task(batcher.submit([f"text {i}"])) for i in range(10)]
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
    result = await batcher.submit(texts)
    np.testing.assert_array_equal(result.vectors, expected(texts))
    assert result.batches == 3
    assert len(fake.batches) == 3
    await batcher.stop()


async def test_an_inference_error_fails_only_the_request_that_caused_it(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=2)
    batcher.start()
    fake.gate.clear()
    holder = asyncio.create_task(batcher.submit(["hold"]))
    await wait_for(fake.entered.is_set)
    # Arrival order fixes the batches (two texts each): [a, FAIL] then [c1, c2] then [d].
    a = asyncio.create_task(batcher.submit(["a"]))
    await wait_for(lambda: batcher.queued_texts == 1)
    b = asyncio.create_task(batcher.submit(["FAIL"]))
    await wait_for(lambda: batcher.queued_texts == 2)
    c = asyncio.create_task(batcher.submit(["c1", "c2"]))
    await wait_for(lambda: batcher.queued_texts == 4)
    d = asyncio.create_task(batcher.submit(["d"]))
    await wait_for(lambda: batcher.queued_texts == 5)
    fake.gate.set()
    outcomes = await asyncio.gather(holder, a, b, c, d, return_exceptions=True)
    # [a, FAIL] failed as a whole, so each of its requests ran again on its own.
    batches = [sorted(batch) for batch in fake.batches]
    assert batches[:2] == [["hold"], ["FAIL", "a"]]
    assert sorted(batches[2:4]) == [["FAIL"], ["a"]]
    assert batches[4:] == [["c1", "c2"], ["d"]]
    assert not isinstance(outcomes[0], BaseException)
    np.testing.assert_array_equal(outcomes[1].vectors, expected(["a"]))
    assert isinstance(outcomes[2], InferenceError) and "boom" in str(outcomes[2])
    np.testing.assert_array_equal(outcomes[3].vectors, expected(["c1", "c2"]))
    np.testing.assert_array_equal(outcomes[4].vectors, expected(["d"]))
    # The worker survived: later requests are served.
    again = await batcher.submit(["after the error"])
    np.testing.assert_array_equal(again.vectors, expected(["after the error"]))
    await batcher.stop()


async def test_a_request_spread_over_batches_fails_if_any_of_them_fails(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=2)
    batcher.start()
    with pytest.raises(InferenceError):
        await batcher.submit(["x1", "x2", "FAIL", "x4", "x5"])
    ok = await batcher.submit(["y"])
    assert ok.vectors.shape == (1, 16)
    await batcher.stop()


async def test_the_queue_is_bounded_and_recovers(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_queue=6, max_batch_texts=64)
    batcher.start()
    fake.gate.clear()
    holder = asyncio.create_task(batcher.submit(["hold"]))
    await wait_for(fake.entered.is_set)
    admitted = [asyncio.create_task(batcher.submit([f"q{i}", "z"])) for i in range(3)]
    await wait_for(lambda: batcher.queued_texts == 6)
    started = time.perf_counter()
    with pytest.raises(QueueFull) as info:
        await batcher.submit(["one too many"])
    assert time.perf_counter() - started < 0.5  # refused at once, not after a wait
    assert info.value.retry_after_s >= 1 and info.value.limit == 6
    assert batcher.queued_texts == 6  # the refused request left no trace
    fake.gate.set()
    results = await asyncio.gather(holder, *admitted)
    assert all(r.vectors.shape[0] in (1, 2) for r in results)
    late = await batcher.submit(["recovered"])
    np.testing.assert_array_equal(late.vectors, expected(["recovered"]))
    assert batcher.queued_texts == 0 and batcher.inflight_requests == 0
    await batcher.stop()


async def test_an_idle_batcher_starts_at_once_without_a_timer(fake: FakeEmbedder):
    batcher = make_batcher(fake)
    batcher.start()
    waits = []
    for i in range(30):
        result = await batcher.submit([f"alone {i}"])
        waits.append(result.queue_s)
    # A batcher that waits on a timer for more work would show >= its timeout here.
    assert statistics.median(waits) < 0.002, waits
    await batcher.stop()


async def test_texts_being_tokenized_count_against_the_queue_bound(fake: FakeEmbedder):
    fake.slow_tokenize_s = 0.3
    batcher = make_batcher(fake, max_queue=4)
    batcher.start()
    slow = asyncio.create_task(batcher.submit(["SLOW a", "SLOW b", "SLOW c"]))
    await wait_for(lambda: fake.tokenize_calls)  # the tokenizer is busy with it
    started = time.perf_counter()
    with pytest.raises(QueueFull):
        await batcher.submit(["one", "two"])
    assert time.perf_counter() - started < 0.1  # refused at once...
    assert fake.tokenize_calls == [["SLOW a", "SLOW b", "SLOW c"]]  # ...and never tokenized
    fits = await batcher.submit(["fits"])
    assert fits.vectors.shape == (1, 16)
    await slow
    await batcher.stop()


async def test_a_tokenizer_error_fails_only_its_request(fake: FakeEmbedder):
    fake.slow_tokenize_s = 0.05
    batcher = make_batcher(fake)
    batcher.start()
    first = asyncio.create_task(batcher.submit(["SLOW first"]))
    await wait_for(lambda: fake.tokenize_calls)
    # These wait while the tokenizer is busy, and are tokenized together in one call.
    rest = [
        asyncio.create_task(batcher.submit(texts))
        for texts in (["good one"], ["x", "BADTOKEN y"], ["good two"])
    ]
    await wait_for(lambda: batcher.queued_texts == 5)
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert ["good one", "x", "BADTOKEN y", "good two"] in fake.tokenize_calls
    assert isinstance(outcomes[2], TokenizationError) and "BADTOKEN" in str(outcomes[2])
    for outcome, texts in zip(
        outcomes, (["SLOW first"], ["good one"], None, ["good two"]), strict=True
    ):
        if texts is not None:
            np.testing.assert_array_equal(outcome.vectors, expected(texts))
    assert batcher.queued_texts == 0 and batcher.inflight_requests == 0
    await batcher.stop()


async def test_truncate_false_refuses_a_long_text_and_names_it(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_seq_length=FAKE_MAX_SEQ)
    batcher.start()
    long_text = " ".join(["word"] * (FAKE_MAX_SEQ + 5))
    with pytest.raises(TextTooLong) as info:
        await batcher.submit(["short", long_text], truncate=False)
    assert info.value.index == 1
    assert fake.batches == []  # nothing of the refused request was embedded
    result = await batcher.submit(["short", long_text])
    assert result.truncated == [False, True]
    await batcher.stop()


async def _establish_load(batcher: Batcher, fake: FakeEmbedder, texts: int) -> None:
    """Make the batcher see `texts` texts in the server at once (its load estimate)."""
    fake.gate.clear()
    holder = asyncio.create_task(batcher.submit(["hold"]))
    await wait_for(fake.entered.is_set)
    waiting = [asyncio.create_task(batcher.submit([f"load {i}"])) for i in range(texts - 1)]
    await wait_for(lambda: batcher.queued_texts == texts - 1)
    fake.gate.set()
    await asyncio.gather(holder, *waiting)
    fake.batches.clear()


async def test_a_free_worker_waits_for_texts_still_being_tokenized(fake: FakeEmbedder):
    fake.delay_s = 0.08  # a batch takes 80 ms: gathering may wait up to a quarter of that
    fake.slow_tokenize_s = 0.005
    batcher = make_batcher(fake, max_batch_wait_s=0.05, tokenizer_threads=2)
    batcher.start()
    await _establish_load(batcher, fake, 4)  # share: 4 texts / (1 worker + 1) = 2
    calls = len(fake.tokenize_calls)
    beta = asyncio.create_task(batcher.submit(["SLOW beta"]))
    await wait_for(lambda: len(fake.tokenize_calls) > calls)  # one tokenizer is busy with it
    alpha = await batcher.submit(["alpha"])  # the other tokenizes this at once
    await beta
    assert [sorted(batch) for batch in fake.batches] == [["SLOW beta", "alpha"]]
    assert alpha.batch_texts == 2
    await batcher.stop()


async def test_gathering_is_bounded_by_max_batch_wait(fake: FakeEmbedder):
    fake.delay_s = 0.08
    fake.slow_tokenize_s = 0.5
    batcher = make_batcher(fake, max_batch_wait_s=0.01, tokenizer_threads=2)
    batcher.start()
    await _establish_load(batcher, fake, 4)
    calls = len(fake.tokenize_calls)
    beta = asyncio.create_task(batcher.submit(["SLOW beta"]))
    await wait_for(lambda: len(fake.tokenize_calls) > calls)
    alpha = await batcher.submit(["alpha"])
    assert 0.008 <= alpha.queue_s < 0.1  # waited its 10 ms for beta, then went alone
    assert not beta.done()
    await beta
    assert fake.batches == [["alpha"], ["SLOW beta"]]
    await batcher.stop()


async def test_a_lone_request_after_a_burst_is_held_at_most_an_arrival_gap(fake: FakeEmbedder):
    fake.delay_s = 0.08
    batcher = make_batcher(fake, max_batch_wait_s=0.05)
    batcher.start()
    await _establish_load(batcher, fake, 8)
    lonely = await batcher.submit(["lonely"])  # nothing else is arriving
    assert lonely.queue_s < 0.01, lonely.queue_s  # the 1 ms quiet gap, not the 20 ms budget
    await batcher.stop()


async def test_a_free_worker_gathers_a_wave_of_arrivals(fake: FakeEmbedder):
    """Texts arriving one by one, each within the arrival gap of the last, share one batch:
    the worker waits for its share (8 texts / (1 worker + 1) = 4) instead of taking the first
    alone. (A long gap and budget, so that a slow test machine cannot split the wave.)"""
    fake.delay_s = 0.4  # gathering may wait up to a quarter of a batch: 100 ms
    batcher = make_batcher(fake, max_batch_wait_s=0.5, arrival_gap_s=0.05)
    batcher.start()
    await _establish_load(batcher, fake, 8)
    wave = []
    for i in range(4):
        wave.append(asyncio.create_task(batcher.submit([f"wave {i}"])))
        await asyncio.sleep(0.01)
    results = await asyncio.gather(*wave)
    assert fake.batches == [[f"wave {i}" for i in range(4)]]
    assert all(r.batch_texts == 4 for r in results)
    await batcher.stop()


async def test_free_workers_split_a_backlog_between_them(fake: FakeEmbedder):
    batcher = make_batcher(fake, workers=2)
    batcher.start()
    fake.gate.clear()
    holders = [asyncio.create_task(batcher.submit([f"hold {i}"])) for i in range(2)]
    await wait_for(lambda: fake.running == 2)
    backlog = [asyncio.create_task(batcher.submit([f"queued {i}"])) for i in range(12)]
    await wait_for(lambda: batcher.queued_texts == 12)
    fake.gate.set()
    await asyncio.gather(*holders, *backlog)
    # Each worker took half, so both computed; one taking all 12 would leave the other idle.
    assert sorted(len(batch) for batch in fake.batches[2:]) == [6, 6], fake.batches
    await batcher.stop()


async def test_stop_drains_queued_work_then_refuses(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=2)
    batcher.start()
    fake.gate.clear()
    tasks = [asyncio.create_task(batcher.submit([f"s{i}"])) for i in range(5)]
    await wait_for(fake.entered.is_set)
    stopping = asyncio.create_task(batcher.stop(timeout_s=10))
    await asyncio.sleep(0.05)
    with pytest.raises(ShuttingDown):
        await batcher.submit(["too late"])
    fake.gate.set()
    assert await stopping
    results = await asyncio.gather(*tasks)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.vectors[0], fake_vector(f"s{i}"))


async def test_texts_of_a_cancelled_request_are_skipped(fake: FakeEmbedder):
    batcher = make_batcher(fake, max_batch_texts=1)
    batcher.start()
    fake.gate.clear()
    holder = asyncio.create_task(batcher.submit(["hold"]))
    await wait_for(fake.entered.is_set)
    doomed = asyncio.create_task(batcher.submit(["gone1", "gone2"]))
    kept = asyncio.create_task(batcher.submit(["kept"]))
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
    results = await asyncio.gather(*(batcher.submit(t) for t in requests))
    for texts, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result.vectors, expected(texts))
    assert fake.max_running > 1, "batches never overlapped"
    assert fake.max_running <= 3
    # An error reaches only the request that caused it, whichever batch it shared.
    outcomes = await asyncio.gather(
        batcher.submit(["FAIL"]),
        batcher.submit(["fine", "also fine", "x", "y"]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], InferenceError)
    np.testing.assert_array_equal(outcomes[1].vectors, expected(["fine", "also fine", "x", "y"]))
    assert await batcher.stop()


async def test_a_runtime_returning_the_wrong_shape_is_an_error():
    fake = FakeEmbedder()
    batcher = Batcher(
        lambda batch: np.zeros((len(batch) + 1, 4), np.float32),
        fake.tokenize,
        max_batch_tokens=100,
        max_batch_texts=8,
        max_queue=8,
    )
    batcher.start()
    with pytest.raises(InferenceError, match="shape"):
        await batcher.submit(["x"])
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
