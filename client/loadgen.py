"""The load generator: one scenario, closed or open loop, warm-up then measurement.

Closed loop: `concurrency` workers; each sends its next request when the last is answered;
latency runs from the actual send. Open loop: a dispatcher starts requests at seeded arrival
times (Poisson or constant) whether or not earlier ones were answered; latency runs from the
SCHEDULED send time, so a client or server that falls behind cannot hide the delay
(coordinated omission), and the schedule lag (actual - scheduled start) is recorded. At most
max_connections requests are in flight: beyond them the dispatcher waits, falls behind its
schedule (the lag shows it) and, at the end, the arrivals it never sent are counted dropped.

Warm-up and measurement are one continuous load: requests that start before the measurement
start are warm-up and count in no latency statistic. A request is measured when its
(scheduled) start falls in the measurement interval [t0, t1); after t1 no request starts and
those in flight are waited for (bounded by the request timeout), so a slow tail is never
dropped. Throughput (and the windows) count successful completions inside [t0, t1).

Stability (perf_analyzer's semantics, client.stats): the measurement is cut into windows long
enough to hold `window_requests` at the throughput seen in warm-up (open loop: the rate);
once min_duration_s and min_requests are met, each window boundary with at least `windows`
full windows behind it is a check (a trial); the measurement stops at the first stable check
whose stable windows hold the requests a p99 interval needs (368), extended one window at a
time up to max_trials checks. The stop follows the boundary within
one poll; the figures are those of the stable windows (client.summary).

A monitor task sleeps a fixed interval and records how late it wakes: the client's own
event-loop lag, in both modes (a saturated client delays every timestamp it takes).

The hot path appends to lists; every statistic is computed after the scenario. Timestamps come
from time.perf_counter (nanosecond resolution), not loop.time(): uvloop's loop time is cached
per loop iteration in whole milliseconds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from time import perf_counter

import aiohttp
import numpy as np

from client.resources import ClientCpu, ServerSampler
from client.scenario import (
    TIMING_NAMES,
    ClientOptions,
    ScenarioParams,
    StabilityParams,
    WarmupParams,
)
from client.stats import (
    P99_SUPPORT,
    Stability,
    Window,
    stability,
    tail_design_effect,
    window_length,
    windows,
)
from client.workload import PreparedRequest, Workload

try:
    import orjson

    loads: Callable[[bytes], object] = orjson.loads
except ImportError:  # pragma: no cover
    import json

    loads = json.loads

NAN = math.nan
POLL_S = 0.02


def arrival_offsets(rate: float, arrival: str, seed: int) -> Iterator[float]:
    """Seconds from the schedule start of each arrival: constant spacing 1/rate, or a Poisson
    process (exponential gaps with mean 1/rate) from a seeded generator."""
    if arrival == "constant":
        i = 0
        while True:
            yield i / rate
            i += 1
    rng = random.Random(seed)
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def scenario_seed(seed: int, name: str, purpose: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class Schedule:
    """The open-loop arrival times (perf_counter), regenerated from the same seed as the
    dispatcher's, so that arrivals it never sent are still known and counted."""

    def __init__(self, rate: float, arrival: str, seed: int, base: float) -> None:
        self._offsets = arrival_offsets(rate, arrival, seed)
        self.base = base
        self._times: list[float] = []

    def until(self, t: float) -> np.ndarray:
        """Every arrival scheduled before t."""
        times = self._times
        while not times or times[-1] < t:
            times.append(self.base + next(self._offsets))
        return np.asarray(times[: bisect.bisect_left(times, t)], dtype=np.float64)


@dataclass
class Recorder:
    """Columns, one entry per finished request (warm-up included)."""

    timing_names: tuple[str, ...]
    start: list[float] = field(default_factory=list)  # scheduled (open) or actual send (closed)
    sent: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    kind: list[str | None] = field(default_factory=list)  # None: success
    n_texts: list[int] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    server_tokens: list[float] = field(default_factory=list)
    timings: list[tuple[float, ...] | None] = field(default_factory=list)
    error_samples: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.end)


@dataclass
class Arrays:
    start: np.ndarray
    sent: np.ndarray
    end: np.ndarray
    ok: np.ndarray
    kind: list[str | None]
    n_texts: np.ndarray
    n_tokens: np.ndarray
    server_tokens: np.ndarray
    timings: np.ndarray  # (n, len(timing_names)), NaN where absent

    @classmethod
    def of(cls, rec: Recorder) -> Arrays:
        n = len(rec)
        width = len(rec.timing_names)
        timings = np.full((n, width), NAN)
        for i, t in enumerate(rec.timings):
            if t is not None:
                timings[i] = t
        return cls(
            start=np.asarray(rec.start[:n], dtype=np.float64),
            sent=np.asarray(rec.sent[:n], dtype=np.float64),
            end=np.asarray(rec.end[:n], dtype=np.float64),
            ok=np.asarray([k is None for k in rec.kind[:n]], dtype=bool),
            kind=list(rec.kind[:n]),
            n_texts=np.asarray(rec.n_texts[:n], dtype=np.int64),
            n_tokens=np.asarray(rec.n_tokens[:n], dtype=np.int64),
            server_tokens=np.asarray(rec.server_tokens[:n], dtype=np.float64),
            timings=timings,
        )


@dataclass
class RawMeasurement:
    """What one scenario produced, before summarizing."""

    params: ScenarioParams
    recorder: Recorder
    t_begin: float
    t0: float  # measurement start (perf_counter)
    t1: float  # measurement stop
    t_drained: float
    trials: int
    stop_reason: str
    interrupted: bool
    warmup_incomplete: bool
    warmup_requests: int
    cancelled: int
    inflight_max: int
    samples: list[tuple[float, float | None, int | None, float | None, int]]
    sampler_failures: int
    sampler_error: str | None
    final_stability: Stability | None
    window_s: float | None = None  # the window length used (None: never sized)
    window_note: str | None = None  # why it is shorter than window_requests asked
    schedule: np.ndarray | None = None  # open loop: every arrival scheduled before t1
    dispatched: int = 0  # open loop: arrivals sent before t1 (all of them, warm-up included)
    loop_lags: list[tuple[float, float]] = field(default_factory=list)  # (when, lag s)
    # stop_when_slo_missed: measured requests over the SLO when it stopped the measurement,
    # and the count at which p99 must exceed it
    slo_breaches: int = 0
    slo_breach_limit: int | None = None


def measure_windows(
    a: Arrays, t0: float, t_end: float, window_s: float, arrivals: np.ndarray | None
) -> list[Window]:
    """The windows of [t0, t_end): completions by completion time (every latency known when
    its window closes), failures at their time to failure; open loop: the scheduled
    arrivals; the tail's design effect from the same requests."""
    done = (a.end >= t0) & (a.end < t_end)
    latency = (a.end[done] - a.start[done]) * 1e3
    in_range = None
    if arrivals is not None:
        in_range = arrivals[(arrivals >= t0) & (arrivals < t_end)] - t0
    return windows(
        a.end[done] - t0,
        latency,
        a.ok[done],
        t_end - t0,
        window_s,
        in_range,
        design_effect=tail_design_effect(a.start[done], latency),
    )


class LoadEngine:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        params: ScenarioParams,
        warmup: WarmupParams,
        stability_params: StabilityParams,
        options: ClientOptions,
        workload: Workload,
        interrupt: asyncio.Event,
        sampler: ServerSampler | None = None,
    ) -> None:
        self.session = session
        self.url = url
        self.params = params
        self.warmup = warmup
        self.stability_params = stability_params
        self.options = options
        self.workload = workload
        self.interrupt = interrupt
        self.sampler = sampler
        self.endpoint = options.endpoint
        self.headers = {"Content-Type": "application/json"}
        names = tuple(n for n in TIMING_NAMES if n in options.timing_headers)
        self.timing_names = names
        self.timing_headers = tuple(options.timing_headers[n] for n in names)
        self.rec = Recorder(names)
        self.sending = False
        self.phase = "starting"
        self.t_begin = math.inf
        self.t0 = math.inf  # requests starting at or after t0 are measured
        self.t1 = math.inf
        self.inflight = 0
        self.inflight_max = 0
        self.completed = 0
        self.measured_done = 0
        self.measured_errors = 0
        self.cancelled = 0
        self.trials = 0  # stability checks made
        self.window_s: float | None = None
        self.window_note: str | None = None
        self.samples: list[tuple[float, float | None, int | None, float | None, int]] = []
        self.sampler_failures = 0
        self.sampler_error: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        # open loop
        self.schedule: Schedule | None = None
        self.send_until = math.inf  # the dispatcher sends arrivals scheduled before this
        self.next_arrival = math.inf  # the arrival the dispatcher sends next
        self.dispatched = 0
        self._slots = asyncio.Semaphore(options.max_connections)
        self.loop_lags: list[tuple[float, float]] = []
        # stop_when_slo_missed: measured requests slower than the SLO so far, and the count at
        # which p99 must exceed it (set when measuring starts)
        self.slo_s = params.slo_p99_ms / 1e3 if params.stop_when_slo_missed else None
        self.slo_breaches = 0
        self.slo_breach_limit: int | None = None
        self.overloaded_since = math.inf

    # ------------------------------------------------------------- one request

    async def _request(self, start: float, req: PreparedRequest) -> float:
        """Send one request; record it. Returns Retry-After seconds of a 429/503 (else 0)."""
        time = perf_counter
        sent = time()
        self.inflight += 1
        if self.inflight > self.inflight_max:
            self.inflight_max = self.inflight
        kind: str | None = None
        message = ""
        server_tokens = NAN
        timings: tuple[float, ...] | None = None
        retry_after = 0.0
        try:
            async with self.session.post(self.url, data=req.body, headers=self.headers) as resp:
                payload = await resp.read()
                end = time()
                status = resp.status
                if status == 200:
                    kind, message, server_tokens = self._check(payload, req.n_texts)
                    if kind is None and self.timing_headers:
                        timings = _timings(resp.headers, self.timing_headers)
                else:
                    kind = f"http_{status}"
                    message = payload[:200].decode("utf-8", "replace")
                    if status in (429, 503):
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
        except asyncio.CancelledError:
            self.inflight -= 1
            if start >= self.t0:
                self.cancelled += 1
            raise
        except TimeoutError as exc:
            end, kind, message = time(), "timeout", f"{type(exc).__name__}: {exc}"
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            end, kind, message = time(), "connection", f"{type(exc).__name__}: {exc}"
        except aiohttp.ClientError as exc:
            end, kind, message = time(), "client_error", f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            end, kind, message = time(), "other", f"{type(exc).__name__}: {exc}"
        self.inflight -= 1
        rec = self.rec
        rec.start.append(start)
        rec.sent.append(sent)
        rec.end.append(end)
        rec.kind.append(kind)
        rec.n_texts.append(req.n_texts)
        rec.n_tokens.append(req.n_tokens)
        rec.server_tokens.append(server_tokens)
        rec.timings.append(timings)
        self.completed += 1
        if start >= self.t0:
            self.measured_done += 1
            if kind is not None:
                self.measured_errors += 1
            if self.slo_s is not None and end - start > self.slo_s:
                self.slo_breaches += 1
        if kind is not None and kind not in rec.error_samples:
            rec.error_samples[kind] = message[:300]
        return retry_after

    def _check(self, payload: bytes, n_texts: int) -> tuple[str | None, str, float]:
        """Validate a 200 response: (error kind or None, message, server-reported tokens)."""
        try:
            doc = loads(payload)
        except ValueError:
            return "bad_body", f"not JSON: {payload[:80]!r}", NAN
        if not isinstance(doc, dict):
            return "bad_body", f"not a JSON object: {type(doc).__name__}", NAN
        if self.endpoint == "embed":
            vectors = doc.get("embeddings")
        else:
            data = doc.get("data")
            vectors = (
                [d.get("embedding") if isinstance(d, dict) else None for d in data]
                if isinstance(data, list)
                else None
            )
        if not isinstance(vectors, list) or len(vectors) != n_texts:
            got = len(vectors) if isinstance(vectors, list) else type(vectors).__name__
            return "bad_body", f"expected {n_texts} embedding(s), got {got}", NAN
        first = vectors[0]
        if not isinstance(first, list) or not first or not isinstance(first[0], int | float):
            return "bad_body", "an embedding is not a non-empty list of numbers", NAN
        dim = len(first)
        for v in vectors:
            if not isinstance(v, list) or len(v) != dim or not isinstance(v[-1], int | float):
                return "bad_body", "embeddings of unequal dimension", NAN
        usage = doc.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return None, "", float(tokens) if isinstance(tokens, int | float) else NAN

    # ------------------------------------------------------------- producers

    async def _worker(self) -> None:
        max_wait = self.options.max_retry_after_s
        while self.sending:
            req = self.workload.next()
            retry_after = await self._request(perf_counter(), req)
            if retry_after and max_wait and self.sending:
                await asyncio.sleep(min(retry_after, max_wait))

    async def _dispatcher(self) -> None:
        p = self.params
        assert p.rate is not None
        seed = scenario_seed(self.options.seed, p.name, "arrivals")
        offsets = arrival_offsets(p.rate, p.arrival, seed)
        time = perf_counter
        base = time()
        self.schedule = Schedule(p.rate, p.arrival, seed, base)
        tasks = self._tasks
        slots = self._slots
        for offset in offsets:
            target = base + offset
            self.next_arrival = target
            delay = target - time()
            # sleep(0) when behind: yield so that responses are read
            await asyncio.sleep(delay if delay > 0 else 0)
            if target >= self.send_until:
                return
            # at most max_connections in flight: beyond them the schedule waits (and lags)
            await slots.acquire()
            if target >= self.send_until:
                slots.release()
                return
            task = self._loop.create_task(self._open_request(target, self.workload.next()))
            self.dispatched += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _open_request(self, target: float, req: PreparedRequest) -> None:
        try:
            await self._request(target, req)
        finally:
            self._slots.release()

    async def _loop_lag_monitor(self) -> None:
        """Sleep a fixed interval, record how late the wake-up came: the event loop's own
        delay to every callback (a response read, a timestamp taken, a request sent)."""
        interval = self.options.loop_lag_interval_ms / 1e3
        lags = self.loop_lags
        time = perf_counter
        while True:
            before = time()
            await asyncio.sleep(interval)
            now = time()
            lags.append((now, max(now - before - interval, 0.0)))

    # ------------------------------------------------------------- control

    async def _wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less if interrupted; always yields to the loop."""
        if self.interrupt.is_set():
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.interrupt.wait(), seconds)

    def current_stability(self, t_end: float, window_s: float) -> tuple[Stability, int]:
        """Stability of the windows from t0 to t_end (a window boundary), and the requests
        that its stable windows hold (0 when unstable)."""
        arrivals = self.schedule.until(t_end) if self.schedule is not None else None
        series = measure_windows(Arrays.of(self.rec), self.t0, t_end, window_s, arrivals)
        sp = self.stability_params
        st = stability(series, sp.windows, sp.tolerance)
        held = sum(w.requests for w in series[st.first or 0 :] if not w.partial)
        return st, held if st.stable else 0

    def _slo_breach_limit(self) -> int | None:
        """How many measured requests over the SLO make p99 exceed it whatever follows: the
        measurement holds at most the arrivals scheduled before max_duration_s (one second
        of slack for the stop's last poll), and p99 (nearest rank) of n latencies exceeds
        the SLO once floor(n / 100) + 1 of them do - a count that grows with n, so the
        largest n bounds it."""
        if self.slo_s is None or self.schedule is None:
            return None
        horizon = self.t0 + self.params.max_duration_s + 1.0
        arrivals = len(self.schedule.until(horizon)) - len(self.schedule.until(self.t0))
        return arrivals // 100 + 1

    def _slo_missed(self, now: float) -> bool:
        """p99 over the measurement can no longer meet the SLO, and the server is overloaded
        now, not only earlier: for at least the SLO's length, more requests have been in
        flight than arrive within the SLO (by Little's law their mean latency is then above
        it). The second part keeps a stall that has passed (its requests finish together,
        and the queue empties), which the stable windows' figures may leave out, from
        ending a probe that could still pass."""
        limit, slo_s, rate = self.slo_breach_limit, self.slo_s, self.params.rate
        if limit is None or slo_s is None or rate is None or self.slo_breaches < limit:
            return False
        if self.inflight <= rate * slo_s:
            self.overloaded_since = math.inf
            return False
        self.overloaded_since = min(self.overloaded_since, now)
        return now - self.overloaded_since >= slo_s

    def _size_windows(self, throughput: float | None) -> None:
        sp, p = self.stability_params, self.params
        self.window_s, self.window_note = window_length(
            sp.window_s, sp.window_requests, throughput, sp.windows, p.max_duration_s
        )

    def _warmup_throughput(self) -> float | None:
        """Completions per second over the second half of warm-up (the first may be cold),
        else over all of it; None when it saw too few to tell."""
        end = np.asarray(self.rec.end, dtype=np.float64)
        for since in (self.t_begin + (self.t0 - self.t_begin) / 2, self.t_begin):
            count = int(((end >= since) & (end < self.t0)).sum())
            if count >= 10 and self.t0 - since >= 0.05:
                return count / (self.t0 - since)
        return None

    async def _take_sample(self, client_cpu: ClientCpu) -> None:
        now = perf_counter()
        cpu = rss = None
        if self.sampler is not None:
            try:
                s = await asyncio.wait_for(asyncio.to_thread(self.sampler.sample), 5)
                cpu, rss = s.cpu_pct, s.rss_bytes
            except Exception as exc:
                self.sampler_failures += 1
                self.sampler_error = f"{type(exc).__name__}: {exc}"[:300]
        self.samples.append((now - self.t0, cpu, rss, client_cpu.sample(), self.inflight))

    async def _sample_loop(self, client_cpu: ClientCpu) -> None:
        """A sample every interval on a fixed cadence (a slow sample delays only itself)."""
        interval = self.options.sample_interval_s
        k = 1
        while self.sending and not self.interrupt.is_set():
            await self._wait(max(0.0, self.t0 + k * interval - perf_counter()))
            if not self.sending or self.interrupt.is_set():
                return
            await self._take_sample(client_cpu)
            k = max(k + 1, math.floor((perf_counter() - self.t0) / interval) + 1)

    async def run(self) -> RawMeasurement:
        p, wu, sp = self.params, self.warmup, self.stability_params
        time = perf_counter
        self.sending = True
        self.t_begin = time()
        self.phase = "warmup"
        if p.mode == "closed":
            assert p.concurrency is not None
            producers = [self._loop.create_task(self._worker()) for _ in range(p.concurrency)]
        else:
            producers = [self._loop.create_task(self._dispatcher())]
        sampling: asyncio.Task[None] | None = None
        lag_monitor = self._loop.create_task(self._loop_lag_monitor())
        warmup_incomplete = False
        stop_reason = "interrupted"
        final: Stability | None = None
        breaches_at_stop = 0
        try:
            # warm-up: until `requests` completed and `duration_s` passed (bounded)
            while not self.interrupt.is_set():
                now = time()
                if self.completed >= wu.requests and now - self.t_begin >= wu.duration_s:
                    break
                if now - self.t_begin >= p.max_duration_s:
                    warmup_incomplete = True
                    break
                await self._wait(POLL_S)
            self.t0 = time()
            warmup_requests = self.completed
            self.phase = "measure"
            if self.sampler is not None:
                await asyncio.to_thread(self.sampler.sample)  # prime the CPU counter
            client_cpu = ClientCpu()
            sampling = self._loop.create_task(self._sample_loop(client_cpu))
            # windows sized for the expected throughput: the rate (open loop), else the
            # warm-up's, else (no warm-up) the measurement's once the minimums are met
            expected = p.rate if p.mode == "open" else self._warmup_throughput()
            if expected is not None:
                self._size_windows(expected)
            self.slo_breach_limit = self._slo_breach_limit()
            last_boundary = 0
            while not self.interrupt.is_set():
                now = time()
                elapsed = now - self.t0
                minimums = elapsed >= p.min_duration_s and self.measured_done >= p.min_requests
                if self.window_s is None and minimums:
                    self._size_windows(self.measured_done / elapsed)
                w = self.window_s
                k = math.floor(elapsed / w + 1e-9) if w else 0
                if w and k >= sp.windows and k > last_boundary:
                    last_boundary = k
                    boundary = self.t0 + k * w
                    if k * w >= p.min_duration_s - 1e-9 and self.measured_done >= p.min_requests:
                        self.trials += 1
                        final, held = self.current_stability(boundary, w)
                        # stable, and its windows hold enough requests for the figures'
                        # p99 (when they do not, one more window, as for an unstable check)
                        enough = held >= P99_SUPPORT or self.trials >= sp.max_trials
                        if final.stable and (enough or not sp.extend_until_stable):
                            stop_reason = "stable"
                        elif not sp.extend_until_stable:
                            stop_reason = "min_reached"
                        elif self.trials >= sp.max_trials:
                            stop_reason = "max_trials"
                        if stop_reason != "interrupted":
                            break
                if elapsed >= p.max_duration_s:
                    stop_reason = "max_duration"
                    break
                if self._slo_missed(now):
                    stop_reason, breaches_at_stop = "slo_missed", self.slo_breaches
                    break
                await self._wait(POLL_S)
            interrupted = self.interrupt.is_set()
            if interrupted:
                stop_reason = "interrupted"
            # the stop: a check's boundary plus at most one poll, a sliver that the figures
            # keep (no request started before the stop goes unmeasured) and that stability,
            # whose windows are whole, leaves out
            self.t1 = time()
            self.sending = False  # no request starts after t1 (the final sample awaits)
            self.send_until = self.t1
            sampling.cancel()
            last = self.samples[-1][0] if self.samples else 0.0
            elapsed = self.t1 - self.t0
            if not interrupted and elapsed - last > self.options.sample_interval_s / 2:
                await self._take_sample(client_cpu)  # a short tail (or scenario) is sampled too
        finally:
            self.sending = False
            self.send_until = min(self.send_until, time())
            self.phase = "drain"
            if p.mode == "open":
                # arrivals due before t1 that the dispatcher has not sent yet (it is behind)
                # get the lag limit to go out; what is left then is dropped
                grace_end = time() + self.options.schedule_lag_limit_ms / 1e3
                while (
                    not self.interrupt.is_set()
                    and not producers[0].done()
                    and self.next_arrival < self.send_until
                    and time() < grace_end
                ):
                    await asyncio.sleep(POLL_S / 4)
                for task in producers:
                    task.cancel()
                await asyncio.wait(producers, timeout=2)
                producers_pending = list(self._tasks)
            else:
                producers_pending = producers
            if sampling is not None:
                sampling.cancel()
            lag_monitor.cancel()
            if self.interrupt.is_set():
                for task in producers_pending:
                    task.cancel()
            pending = [*producers, *producers_pending]
            if sampling is not None:
                pending.append(sampling)
            if pending:
                _done, still = await asyncio.wait(
                    pending, timeout=self.options.request_timeout_s + 2
                )
                for task in still:
                    task.cancel()
                if still:
                    await asyncio.wait(still, timeout=2)
        self.phase = "done"
        return RawMeasurement(
            params=p,
            recorder=self.rec,
            t_begin=self.t_begin,
            t0=self.t0,
            t1=self.t1,
            t_drained=time(),
            trials=self.trials,
            stop_reason=stop_reason,
            interrupted=interrupted,
            warmup_incomplete=warmup_incomplete,
            warmup_requests=warmup_requests,
            cancelled=self.cancelled,
            inflight_max=self.inflight_max,
            samples=self.samples,
            sampler_failures=self.sampler_failures,
            sampler_error=self.sampler_error,
            final_stability=final,
            window_s=self.window_s,
            window_note=self.window_note,
            schedule=self.schedule.until(self.t1) if self.schedule is not None else None,
            dispatched=self.dispatched,
            loop_lags=self.loop_lags,
            slo_breaches=breaches_at_stop,
            slo_breach_limit=self.slo_breach_limit,
        )


def _timings(headers: object, names: tuple[str, ...]) -> tuple[float, ...] | None:
    get = headers.get  # type: ignore[attr-defined]
    values = []
    found = False
    for name in names:
        raw = get(name)
        if raw is None:
            values.append(NAN)
            continue
        try:
            values.append(float(raw))
            found = True
        except ValueError:
            values.append(NAN)
    return tuple(values) if found else None


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0  # an HTTP date: not worth parsing for a benchmark
