"""The server under test: readiness, /info and /metrics."""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

import aiohttp


class ServerUnreachable(Exception):
    """The server did not become ready within the readiness wait."""


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + path


async def wait_ready(
    session: aiohttp.ClientSession, base_url: str, timeout_s: float, interval_s: float = 0.25
) -> float:
    """Poll GET /health until it answers 200; return the seconds waited. Raises
    ServerUnreachable naming the last problem once `timeout_s` has passed."""
    url = join_url(base_url, "/health")
    started = time.monotonic()
    deadline = started + timeout_s
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=max(0.1, min(2.0, remaining)))
            async with session.get(url, timeout=timeout) as resp:
                await resp.read()
                if resp.status == 200:
                    return time.monotonic() - started
                last = f"GET /health answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            last = _describe(exc)
        if time.monotonic() + interval_s > deadline:
            raise ServerUnreachable(
                f"server at {base_url} not ready after {timeout_s:g} s ({last})"
            )
        await asyncio.sleep(interval_s)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


async def fetch_info(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any] | None:
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with session.get(join_url(base_url, "/info"), timeout=timeout) as resp:
            if resp.status != 200:
                return None
            doc = await resp.json(content_type=None)
            return doc if isinstance(doc, dict) else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def fetch_metrics(session: aiohttp.ClientSession, base_url: str) -> dict[str, float] | None:
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with session.get(join_url(base_url, "/metrics"), timeout=timeout) as resp:
            if resp.status != 200:
                return None
            return parse_prometheus(await resp.text())
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line of the text exposition format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        if math.isfinite(value):
            out[m.group(1)] = value
    return out


_COUNTER_LIKE = ("_total", "_count", "_sum", "_bucket")


def metrics_delta(
    before: dict[str, float] | None, after: dict[str, float] | None, limit: int = 500
) -> dict[str, float]:
    """after - before per sample (for counters: what the scenario added, warm-up included).
    A counter-like sample (_total, _count, _sum, _bucket) missing before counts from 0; other
    samples (gauges) need both readings."""
    if before is None or after is None:
        return {}
    delta: dict[str, float] = {}
    for key in sorted(after):
        if key.split("{", 1)[0].endswith("_created"):
            continue  # creation timestamps, not measurements
        if key in before:
            delta[key] = after[key] - before[key]
        elif key.split("{", 1)[0].endswith(_COUNTER_LIKE):
            delta[key] = after[key]
        if len(delta) >= limit:
            break
    return delta
