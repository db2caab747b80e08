"""Issue 17's hostile battery against a real `python -m server` on the real prepared MiniLM:
every attack gets its expected answer, the server stays healthy, its RSS stays bounded, and
normal one-sentence requests sent during each attack stay under 3x their idle p50 (attacks that
carry legitimate work: 3x the idle p50 plus that work's own latency). The table is printed
(pytest -s shows it); bench/hostile.py prints the same table against any server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.hostile_battery import (
    TEST_LIMITS,
    MiB,
    Result,
    attacks,
    run_battery,
    running_server,
    table_header,
    table_row,
)

pytestmark = [pytest.mark.slow]

# RSS may grow by this much per attack (the allocator keeps some of a 4 MiB body's copies) and
# over the whole battery.
RSS_GROWTH_PER_ATTACK = 150 * MiB
RSS_GROWTH_TOTAL = 300 * MiB


@pytest.fixture(scope="module")
def hostile_server(fp32_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server on the fp32 MiniLM with the battery's settings (short read timeouts)."""
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with running_server(fp32_dir, TEST_LIMITS, log) as url:
        yield url


@pytest.fixture(scope="module")
def battery(hostile_server: str) -> tuple[float, list[Result]]:
    print()
    print(table_header())
    idle, results = asyncio.run(
        run_battery(hostile_server, TEST_LIMITS, on_result=lambda r: print(table_row(r)))
    )
    print(f"idle p50 of a normal request: {idle * 1e3:.1f} ms")
    return idle, results


def test_the_battery_holds_at_least_40_attacks():
    assert len(attacks(TEST_LIMITS)) >= 40


def test_every_attack_gets_its_expected_answer(battery):
    _, results = battery
    wrong = [f"{r.name}: {r.answer!r}, expected {r.expect}" for r in results]
    wrong = [w for w, r in zip(wrong, results, strict=True) if not r.answered_as_expected]
    assert not wrong, "\n".join(wrong)


def test_the_server_is_healthy_after_every_attack(battery):
    _, results = battery
    assert [r.name for r in results if not r.healthy_after] == []


def test_rss_growth_is_bounded(battery):
    _, results = battery
    grown = [
        f"{r.name}: +{(r.rss_after - r.rss_before) / MiB:.0f} MiB"
        for r in results
        if r.rss_after - r.rss_before > RSS_GROWTH_PER_ATTACK
    ]
    assert not grown, "\n".join(grown)
    total = results[-1].rss_after - results[0].rss_before
    assert total < RSS_GROWTH_TOTAL, f"RSS grew by {total / MiB:.0f} MiB over the battery"


def test_normal_requests_stay_fast_during_every_attack(battery):
    """p50 of normal requests during each attack under its bound (3x idle p50, or 3x idle p50
    plus the attack's legitimate work), after one retry of a slow attack."""
    idle, results = battery
    slow = [
        f"{r.name}: p50 {r.during_p50_s * 1e3:.1f} ms (max {r.during_max_s * 1e3:.0f} ms) = "
        f"{r.ratio:.1f}x idle p50 {idle * 1e3:.1f} ms; bound {r.latency_bound_s * 1e3:.1f} ms"
        for r in results
        if not r.latency_ok and r.latency_bound_s is not None
    ]
    assert not slow, "\n".join(slow)
