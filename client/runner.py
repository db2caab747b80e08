"""A benchmark run: wait for the server, describe it, run each scenario, write the result.

The result file is rewritten atomically after every scenario (and once before the first), so
a crash or an interrupt later loses nothing measured. Until the run ends its status is
`incomplete`; an interrupt (SIGINT/SIGTERM) stops the current scenario at once, keeps what it
measured (marked incomplete and invalid) and ends the run as `incomplete`.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from client import __version__
from client.env import fingerprint, git_sha
from client.loadgen import LoadEngine
from client.progress import PlainReporter, ProgressMode, Reporter, make_reporter
from client.resources import SamplerError, ServerSampler, make_server_sampler
from client.result import (
    ClientInfo,
    RunMetadata,
    RunResult,
    ScenarioResult,
    comparability_key,
    history_hardware_key,
    stable_hash,
    write_atomic,
)
from client.scenario import (
    ENDPOINT_PATHS,
    ClientOptions,
    RunLabels,
    ScenarioDefinition,
    ScenarioParams,
    StabilityParams,
    WarmupParams,
    definition_of,
)
from client.search import run_search
from client.summary import summarize
from client.target import (
    ServerUnreachable,
    fetch_info,
    fetch_metrics,
    join_url,
    metrics_delta,
    wait_ready,
)
from client.workload import TextSource, TokenCounter, Workload, load_corpus

# /info keys that configure the server (the comparability-relevant server config)
SERVER_CONFIG_KEYS = (
    "runtime",
    "threads",
    "workers",
    "spinning",
    "batching",
    "max_seq_length",
    "inter_op_threads",
    "graph_optimization_level",
)
# Keys added after histories began, with the value every server had before they existed: a
# result at that value (or null: the runtime has no such option) leaves the key out, so its
# comparability key, and its history, are what they were; any other value starts a new one.
SERVER_CONFIG_SINCE: dict[str, Any] = {"inter_op_threads": None, "graph_optimization_level": "all"}


def server_config(info: dict[str, Any]) -> dict[str, Any]:
    """The comparability-relevant server config from /info (SERVER_CONFIG_KEYS)."""
    return {
        key: info[key]
        for key in SERVER_CONFIG_KEYS
        if key in info
        and not (key in SERVER_CONFIG_SINCE and info[key] in (None, SERVER_CONFIG_SINCE[key]))
    }


class Interrupted(Exception):
    """Interrupted before any result was written."""


@dataclass
class RunRequest:
    url: str
    scenarios: list[ScenarioParams]
    out: Path
    warmup: WarmupParams = field(default_factory=WarmupParams)
    stability: StabilityParams = field(default_factory=StabilityParams)
    options: ClientOptions = field(default_factory=ClientOptions)
    labels: RunLabels = field(default_factory=RunLabels)
    wait_timeout_s: float = 60.0
    container: str | None = None
    docker_url: str | None = None
    server_pid: int | None = None
    progress: ProgressMode = "auto"
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    corpus_path: str | None = None
    fail_on_invalid: bool = False


def _pick(label: Any, info: dict[str, Any], key: str) -> Any:
    return label if label not in (None, "") else info.get(key)


def _metadata(req: RunRequest, info: dict[str, Any], container: dict[str, Any]) -> RunMetadata:
    lab = req.labels
    config = server_config(info)
    load_ms = info.get("model_load_ms")
    threads = info.get("threads")
    libs = info.get("library_versions")
    return RunMetadata(
        url=req.url,
        endpoint=ENDPOINT_PATHS[req.options.endpoint],
        model=_pick(lab.model, info, "model_id") or info.get("model"),
        variant=_pick(lab.variant, info, "variant"),
        runtime=_pick(lab.runtime, info, "runtime"),
        runtime_version=info.get("runtime_version"),
        server_version=info.get("server_version") or info.get("version"),
        manifest_sha256=info.get("manifest_sha256") or info.get("manifest_hash"),
        model_load_ms=float(load_ms) if isinstance(load_ms, int | float) else None,
        threads=threads if isinstance(threads, int) else None,
        server_config=config,
        server_config_key=stable_hash(config),
        server_library_versions=(
            {str(k): str(v) for k, v in libs.items()} if isinstance(libs, dict) else {}
        ),
        image=lab.image or container.get("image"),
        image_digest=lab.image_digest or container.get("image_digest"),
        container_id=container.get("container_id"),
        git_sha=lab.git_sha or git_sha(),
        labels=dict(lab.labels),
        server_info=info,
    )


def _mismatches(labels: RunLabels, info: dict[str, Any]) -> list[str]:
    notes = []
    for key in ("variant", "runtime"):
        given, served = getattr(labels, key), info.get(key)
        if given and served and str(given) != str(served):
            notes.append(f"label {key}={given!r} but the server reports {key}={served!r}")
    return notes


async def _race(coro: Any, interrupt: asyncio.Event) -> Any:
    """Run `coro` unless interrupted first (then raise Interrupted)."""
    task = asyncio.ensure_future(coro)
    stop = asyncio.ensure_future(interrupt.wait())
    done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stop.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise Interrupted("interrupted while waiting for the server")


async def run_benchmark(
    req: RunRequest, interrupt: asyncio.Event | None = None, reporter: Reporter | None = None
) -> RunResult:
    interrupt = interrupt or asyncio.Event()
    reporter = reporter or make_reporter(req.progress)
    try:
        return await _run(req, interrupt, reporter)
    finally:
        reporter.close()


async def _run(req: RunRequest, interrupt: asyncio.Event, reporter: Reporter) -> RunResult:
    loop = asyncio.get_running_loop()
    wall_at_clock_zero = time.time() - time.perf_counter()
    options = req.options
    counter = TokenCounter(options.tokenizer)
    corpus = load_corpus(req.corpus_path)
    source = TextSource(corpus, counter)
    started_at = datetime.now(UTC)
    notes: list[str] = []

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as control:
        reporter.message(f"waiting for {req.url} (up to {req.wait_timeout_s:g} s)")
        waited = await _race(wait_ready(control, req.url, req.wait_timeout_s), interrupt)
        info = await fetch_info(control, req.url) or {}
        if not info:
            notes.append("GET /info gave no JSON object; server metadata comes from labels only")
        sampler: ServerSampler | None = None
        container_desc: dict[str, Any] = {}
        try:
            sampler = await asyncio.wait_for(
                asyncio.to_thread(
                    make_server_sampler, req.container, req.docker_url, req.server_pid
                ),
                15,
            )
            if sampler is not None and sampler.source == "docker":
                container_desc = await asyncio.wait_for(asyncio.to_thread(sampler.describe), 10)
        except (SamplerError, TimeoutError) as exc:
            notes.append(f"server resources not sampled: {exc or 'timed out'}")
            reporter.message(f"warning: server resources not sampled: {exc or 'timed out'}")
            sampler = None
        notes.extend(_mismatches(req.labels, info))
        metadata = _metadata(req, info, container_desc)
        env = await asyncio.to_thread(fingerprint)
        reporter.message(
            f"server ready after {waited:.1f} s: model={metadata.model} "
            f"variant={metadata.variant} runtime={metadata.runtime}"
        )
        event_loop = type(loop).__module__.split(".")[0]
        result = RunResult(
            run_id=uuid.uuid4().hex,
            status="incomplete",
            status_reason=f"running: 0 of {len(req.scenarios)} scenarios done",
            started_at=started_at,
            finished_at=None,
            valid=False,
            metadata=metadata,
            client=ClientInfo(
                version=__version__,
                python=sys.version.split()[0],
                argv=req.argv,
                options=options,
                corpus_sha256=corpus.sha256,
                token_counter=counter.name,
                event_loop=event_loop,
            ),
            environment=env,
            warmup=req.warmup,
            stability=req.stability,
            scenarios=[],
            notes=notes,
        )
        write_atomic(req.out, result)

        measurer = Measurer(
            req=req,
            control=control,
            url=join_url(req.url, ENDPOINT_PATHS[options.endpoint]),
            source=source,
            corpus_sha256=corpus.sha256,
            token_counter=counter.name,
            metadata=metadata,
            hardware_key=history_hardware_key(env.hardware_key, metadata.labels),
            sampler=sampler,
            interrupt=interrupt,
            reporter=reporter,
            wall_at_clock_zero=wall_at_clock_zero,
        )
        status_reason: str | None = None
        status = "complete"
        for index, params in enumerate(req.scenarios, start=1):
            if interrupt.is_set():
                break
            try:
                scenario, interrupted = await measurer.scenario(params, index)
            except ServerUnreachable as exc:
                status, status_reason = "failed", f"server went away in {params.name}: {exc}"
                reporter.message(f"error: {status_reason}")
                break
            result.scenarios.append(scenario)
            result.status_reason = f"running: {index} of {len(req.scenarios)} scenarios done"
            write_atomic(req.out, result)
            reporter.scenario_finished(scenario)
            if interrupted:
                break
            if index < len(req.scenarios) and not interrupt.is_set():
                try:
                    await measurer.ready()
                except ServerUnreachable as exc:
                    status, status_reason = "failed", f"server went away after {params.name}: {exc}"
                    reporter.message(f"error: {status_reason}")
                    break
                except Interrupted:
                    break

        done = len(result.scenarios)
        if interrupt.is_set():
            status = "incomplete"
            status_reason = f"interrupted: {done} of {len(req.scenarios)} scenarios run"
        result.status = status  # type: ignore[assignment]
        result.status_reason = status_reason
        result.finished_at = datetime.now(UTC)
        result.valid = (
            status == "complete"
            and bool(result.scenarios)
            and all(s.valid for s in result.scenarios)
        )
        write_atomic(req.out, result)
        return result


@dataclass
class Measurer:
    """Measures the run's scenarios against one server: a plain scenario is one measurement
    at one load; a search is a bisection over such measurements (its probes)."""

    req: RunRequest
    control: aiohttp.ClientSession  # /metrics, /health: apart from the load's connections
    url: str  # the endpoint the load goes to
    source: TextSource
    corpus_sha256: str
    token_counter: str
    metadata: RunMetadata
    hardware_key: str
    sampler: ServerSampler | None
    interrupt: asyncio.Event
    reporter: Reporter
    wall_at_clock_zero: float

    def keys_of(self, params: ScenarioParams) -> tuple[ScenarioDefinition, str]:
        """The scenario's definition and its history (comparability) key."""
        options, metadata = self.req.options, self.metadata
        definition = definition_of(params, options, self.corpus_sha256, self.token_counter)
        key = comparability_key(
            metadata.model,
            metadata.variant,
            metadata.runtime,
            definition.key(),
            metadata.server_config_key,
            self.hardware_key,
        )
        return definition, key

    async def scenario(self, params: ScenarioParams, index: int) -> tuple[ScenarioResult, bool]:
        """One scenario of the run: its result and whether it was interrupted. Raises
        ServerUnreachable when the server goes away between a search's probes."""
        if params.search is None:
            return await self.measure(params, index)

        async def probe(p: ScenarioParams) -> ScenarioResult:
            probe_result, _ = await self.measure(p, index)
            self.reporter.scenario_finished(probe_result)
            return probe_result

        definition, key = self.keys_of(params)
        scenario = await run_search(
            params, definition, key, probe, self.settle, self.reporter.message
        )
        return scenario, scenario.status == "incomplete"

    async def measure(self, params: ScenarioParams, index: int) -> tuple[ScenarioResult, bool]:
        """One measurement at one load (a scenario, or one probe of a search): its result
        and whether it was interrupted."""
        req, options, sampler = self.req, self.req.options, self.sampler
        definition, key = self.keys_of(params)
        metrics_before = await fetch_metrics(self.control, req.url)
        limit = params.concurrency if params.mode == "closed" else options.max_connections
        connector = aiohttp.TCPConnector(limit=limit or 1, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=options.request_timeout_s)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
        ) as session:
            engine = LoadEngine(
                session,
                self.url,
                params,
                req.warmup,
                req.stability,
                options,
                Workload(self.source, params, options),
                self.interrupt,
                sampler,
            )
            self.reporter.scenario_started(index, len(req.scenarios), engine)
            ticker = asyncio.ensure_future(_tick(self.reporter, engine))
            try:
                raw = await engine.run()
            finally:
                ticker.cancel()
        metrics_after = await fetch_metrics(self.control, req.url)
        scenario = summarize(
            raw,
            definition=definition,
            comparability_key=key,
            warmup=req.warmup,
            stability_params=req.stability,
            options=options,
            wall_at_clock_zero=self.wall_at_clock_zero,
            resource_source=sampler.source if sampler else None,
            metrics_delta=metrics_delta(metrics_before, metrics_after),
        )
        return scenario, raw.interrupted

    async def settle(self) -> bool:
        """Between two probes of a search: the server answers again (False: interrupted)."""
        try:
            await self.ready()
        except Interrupted:
            return False
        return True

    async def ready(self) -> None:
        """Wait until the server answers again (at most 10 s); raises Interrupted or
        ServerUnreachable."""
        await _race(
            wait_ready(self.control, self.req.url, min(self.req.wait_timeout_s, 10)),
            self.interrupt,
        )


async def _tick(reporter: Reporter, engine: LoadEngine) -> None:
    if isinstance(reporter, PlainReporter):
        return
    while True:
        reporter.tick(engine, time.perf_counter())
        await asyncio.sleep(0.25)
