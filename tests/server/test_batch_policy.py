"""The batching decisions on their own: pure functions of the queue's state, no threads."""

from __future__ import annotations

import pytest

from server.batch_policy import (
    GATHER_FRACTION,
    QueueView,
    follow_load,
    gather_budget,
    gather_wait,
    share,
    window_limit,
)


def view(**values: float) -> QueueView:
    defaults = {
        "queued_texts": 0,
        "queued_tokens": 0,
        "tokenizing_texts": 0,
        "texts_in_server": 0,
        "load_texts": 0.0,
        "last_queued_at": 0.0,
    }
    defaults.update(values)
    return QueueView(**defaults)  # type: ignore[arg-type]


def wait(v: QueueView, now: float = 10.0, started: float = 10.0, deadline: float = 10.005):
    return gather_wait(
        v, now=now, started=started, deadline=deadline, share_texts=8, max_batch_tokens=1000
    )


@pytest.mark.parametrize(
    ("load", "workers", "expected"),
    [(0, 1, 1), (1, 1, 1), (16, 1, 8), (16, 3, 4), (1000, 1, 64), (2.4, 1, 1)],
)
def test_a_workers_share_is_the_load_over_workers_plus_one(load, workers, expected):
    assert share(load, workers, max_batch_texts=64) == expected


def test_the_load_estimate_rises_at_once_and_falls_by_half():
    assert follow_load(4.0, 10) == 10.0
    assert follow_load(10.0, 2) == 6.0
    assert follow_load(6.0, 2) == 4.0


@pytest.mark.parametrize(
    ("queued", "share_texts", "workers", "expected"),
    [
        (10, 4, 1, 10),  # one worker takes the lot (within a batch)
        (100, 4, 2, 50),  # two free workers split a backlog
        (9, 4, 2, 5),  # half (5) leaves 4, a whole share for the other worker
        (7, 4, 2, 7),  # 7-4=3 would be left, less than a share: take it all
        (300, 4, 2, 64),  # never more than a batch
    ],
)
def test_a_window_splits_a_backlog_but_leaves_no_crumbs(queued, share_texts, workers, expected):
    assert window_limit(queued, share_texts, workers, max_batch_texts=64) == expected


def test_gathering_is_bounded_by_the_wait_and_by_a_fraction_of_a_batch():
    assert gather_budget(0.005, batch_s=0.100, batches_seen=0) == 0.005
    assert gather_budget(0.005, batch_s=0.004, batches_seen=3) == pytest.approx(
        GATHER_FRACTION * 0.004
    )


def test_a_worker_takes_its_window_at_once_when_its_share_is_queued():
    assert wait(view(queued_texts=8, load_texts=20, texts_in_server=8)) is None
    assert wait(view(queued_texts=1, queued_tokens=1000, load_texts=20)) is None  # a full batch


def test_a_worker_waits_out_the_deadline_while_texts_are_being_tokenized():
    assert wait(view(queued_texts=1, tokenizing_texts=3, load_texts=20)) == pytest.approx(0.005)
    assert wait(view(tokenizing_texts=3, load_texts=20), now=10.006) is None  # past it


def test_a_worker_does_not_wait_for_texts_the_load_does_not_promise():
    # Every text the estimate expects is in the server already: nothing more is coming.
    assert wait(view(queued_texts=2, texts_in_server=20, load_texts=20)) is None


def test_a_worker_stops_gathering_when_the_wave_is_over():
    recent = view(queued_texts=2, texts_in_server=2, load_texts=20, last_queued_at=10.0)
    assert wait(recent, now=10.0005) == pytest.approx(0.0005)  # until the arrival gap is over
    assert wait(recent, now=10.002) is None
