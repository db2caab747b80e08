"""Tuning the server's settings per host: the `tune_server` task of the benchmark group.

For one target (model, runtime, variant) on one host, the search measures candidate server
settings with short closed-loop runs of the real load client, each against a server started
with those settings through the Site, and hands the best to the benchmark. Its space is
benchmark.yaml's `autotune:` section (embench.config.schema.AutotuneConfig).

- Search: coordinate descent from the configured settings (the default), one axis at a time
  in AXES' order, each axis's best kept before the next. A full grid of the nightly space
  (2 layouts x 2 inter-op x 2 spinning x 3 optimization levels x 3 batch budgets = 72
  servers) would cost about 12 minutes per target on a 2-core host; coordinate descent costs
  1 + sum(values - 1) (9 there), and the axes interact little (the layout decides how the
  cores are used, the rest tunes within it). `max_candidates` bounds it.
- Confirmation: these hosts are noisy (the same run an hour apart differs by up to 31%), so
  a search's best is only a candidate: it is measured against the default interleaved
  (default, best, default, best, ...; `rounds` pairs, so slow drift hits both alike) and
  replaces the default only when it was faster in every round AND its mean QPS beats the
  default's by more than `margin` (5%: the regression detector's own smallest relative
  change; a smaller gain could not be told from noise in the history anyway).
- Cache: keyed by the host's hardware fingerprint (the load client's own hardware_key,
  taken on the host before anything is measured), the server's limits, the prepared model
  (manifest hash), the server's build (image ID, or runtime libraries for a process), the
  configured settings, the search space and TUNING_VERSION. A nightly run whose key is
  unchanged reuses the record without starting a server.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.result import load_result, stable_hash
from client.scenario import (
    ClientOptions,
    RunLabels,
    ScenarioFile,
    ScenarioParams,
    StabilityParams,
    WarmupParams,
)
from embench.bench import write_scenario_file
from embench.config.schema import PEER_RUNTIMES, RUNTIME_VARIANTS, AutotuneConfig
from embench.errors import EmbenchError
from embench.launch.handle import ServerHandle
from embench.launch.site import Site
from embench.paths import data_dir
from server.config import RUNTIME_SPECIFIC, ServerSettings

log = logging.getLogger(__name__)

# Bump when the search, the measurement or the record changes: cached records are then stale.
TUNING_VERSION = 1
# The runtimes of our own server; a peer server has no settings of ours to tune.
TUNABLE_RUNTIMES = tuple(r for r in RUNTIME_VARIANTS if r not in PEER_RUNTIMES)
# The axes in the order the search walks them: the layout first (it decides how the cores
# are used), then the options within it.
AXES = ("layout", "inter_op_threads", "spinning", "graph_optimization_level", "max_batch_tokens")
# Runtimes an axis means something to (an axis not listed: every runtime).
AXIS_RUNTIMES: dict[str, tuple[str, ...]] = {
    **RUNTIME_SPECIFIC,
    "spinning": ("onnx",),  # only ONNX Runtime's thread pools spin
}
TOKENIZER_FILE = "tokenizer.json"


# ------------------------------------------------------------------------- candidates


def axis_options(space: AutotuneConfig, runtime: str) -> dict[str, list[dict[str, Any]]]:
    """Each searched axis's values as settings overrides, for this runtime (axes it has no use
    for, and empty axes, left out). A layout "WxT" is workers=W, threads=T."""
    values: dict[str, list[dict[str, Any]]] = {}
    for axis in AXES:
        if runtime not in AXIS_RUNTIMES.get(axis, (runtime,)):
            continue
        if axis == "layout":
            options = []
            for layout in space.layouts:
                workers, threads = layout.split("x")
                options.append({"workers": int(workers), "threads": int(threads)})
        else:
            options = [{axis: value} for value in getattr(space, axis)]
        if options:
            values[axis] = options
    return values


def effective(settings: dict[str, Any], runtime: str) -> str:
    """A key equal for settings the server runs identically: unset keys at the server's
    defaults, settings the runtime ignores left out, ONNX Runtime's unset inter-op as 1."""
    full: dict[str, Any] = {}
    for name, field in ServerSettings.model_fields.items():
        if name in ("model_dir", "runtime", "threads"):
            continue
        full[name] = settings.get(name, field.default)
    full["threads"] = settings.get("threads")  # unset: the CPUs the server may use
    for name, runtimes in AXIS_RUNTIMES.items():
        if runtime not in runtimes:
            full.pop(name, None)
    if runtime == "onnx" and full.get("inter_op_threads") is None:
        full["inter_op_threads"] = 1
    return stable_hash(full)


@dataclass(frozen=True)
class Measurement:
    """One candidate's figures. p99 is null when the run was too short to bound it (fewer
    than 368 requests); QPS alone decides, p50 and p99 are shown beside it."""

    qps: float
    p99_ms: float | None
    p50_ms: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "qps": round(self.qps, 2),
            "p50_ms": _round(self.p50_ms),
            "p99_ms": _round(self.p99_ms),
            "error": self.error,
        }


Measure = Callable[[dict[str, Any]], Measurement]


def coordinate_descent(
    base: dict[str, Any],
    axes: dict[str, list[dict[str, Any]]],
    measure: Measure,
    runtime: str,
    max_candidates: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The best settings found from `base` (measured first) along each axis in turn, and a
    record of every candidate measured, in order. Settings the server would run identically
    are measured once; at most `max_candidates` servers in all."""
    seen: dict[str, Measurement] = {}
    candidates: list[dict[str, Any]] = []

    def measured(settings: dict[str, Any], axis: str | None) -> Measurement | None:
        key = effective(settings, runtime)
        if key not in seen:
            if len(seen) >= max_candidates:
                return None
            seen[key] = measure(settings)
            candidates.append({"axis": axis, "settings": settings, **seen[key].to_dict()})
            log.info("autotune %s: %s -> %s", axis or "default", settings, seen[key].to_dict())
        return seen[key]

    current = dict(base)
    first = measured(current, None)
    if first is None or first.error:
        raise EmbenchError(f"the default settings could not be measured: {first}")
    for axis, options in axes.items():
        best, best_qps = current, seen[effective(current, runtime)].qps
        for option in options:
            candidate = {**current, **option}
            result = measured(candidate, axis)
            if result is not None and not result.error and result.qps > best_qps:
                best, best_qps = candidate, result.qps
        current = best
    return current, candidates


# ------------------------------------------------------------------------ the margin


def confirm(
    default_qps: list[float], best_qps: list[float], margin: float
) -> tuple[bool, float | None]:
    """Whether the best replaces the default, from interleaved pairs of measurements: faster
    in every pair, and its mean QPS more than `margin` above the default's. Also the ratio of
    the means (best / default)."""
    if not default_qps or len(default_qps) != len(best_qps):
        raise ValueError("confirm needs as many measurements of the best as of the default")
    default_mean = statistics.fmean(default_qps)
    ratio = statistics.fmean(best_qps) / default_mean if default_mean > 0 else None
    every_round = all(b > d for d, b in zip(default_qps, best_qps, strict=True))
    return (every_round and ratio is not None and ratio > 1 + margin), ratio


# --------------------------------------------------------------------------- cache


def cache_key(
    *,
    hardware_key: str,
    limits: dict[str, Any],
    manifest_sha256: str,
    server_build: str,
    runtime: str,
    base_settings: dict[str, Any],
    space: AutotuneConfig,
) -> str:
    """What a tuning result depends on. `enabled` is no part of the search."""
    return stable_hash(
        {
            "version": TUNING_VERSION,
            "hardware_key": hardware_key,
            "limits": limits,
            "manifest_sha256": manifest_sha256,
            "server_build": server_build,
            "runtime": runtime,
            "settings": base_settings,
            "space": space.model_dump(exclude={"enabled"}),
        }
    )


def cache_path(key: str) -> Path:
    return data_dir() / "tuning" / f"{key}.json"


def read_cache(key: str) -> dict[str, Any] | None:
    path = cache_path(key)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable tuning cache %s: %s", path, exc)
        return None
    return record if isinstance(record, dict) and record.get("cache_key") == key else None


def write_cache(key: str, record: dict[str, Any]) -> Path:
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    temporary.replace(path)
    return path


# ------------------------------------------------------------------- on the host


def tuning_scenarios(space: AutotuneConfig, labels: dict[str, str]) -> ScenarioFile:
    """The autotune's measurement: one short closed-loop slice (closed_slice_scenarios)."""
    return closed_slice_scenarios(
        name="autotune",
        concurrency=space.concurrency,
        measure_s=space.measure_s,
        warmup_s=space.warmup_s,
        texts_per_request=space.texts_per_request,
        labels=labels,
        length_bucket=space.length_bucket,
    )


def closed_slice_scenarios(
    *,
    name: str,
    concurrency: int,
    measure_s: float,
    warmup_s: float,
    texts_per_request: int,
    labels: dict[str, str],
    length_bucket: str = "short",
) -> ScenarioFile:
    """One short closed-loop scenario: warm-up `warmup_s`, then `measure_s` measured as two
    windows that are never extended (stability is not the question for a slice: comparing
    slices interleaved is). The autotune and the A/B comparison measure with it."""
    return ScenarioFile(
        scenarios=[
            ScenarioParams(
                name=name,
                mode="closed",
                concurrency=concurrency,
                min_requests=1,
                min_duration_s=measure_s,
                max_duration_s=2 * measure_s + warmup_s + 5,
                texts_per_request=texts_per_request,
                length_bucket=length_bucket,
            )
        ],
        warmup=WarmupParams(requests=concurrency, duration_s=warmup_s),
        stability=StabilityParams(
            window_s=measure_s / 2,
            window_requests=1,
            windows=2,
            tolerance=0.99,
            extend_until_stable=False,
            max_trials=1,
        ),
        options=ClientOptions(tokenizer=TOKENIZER_FILE),
        metadata=RunLabels(labels=labels),
    )


def measure_slice(
    site: Site,
    handle: ServerHandle,
    scenarios: Path,
    out: Path,
    client_name: str,
    labels: dict[str, str],
    timeout_s: float,
) -> Measurement:
    """Run the load client's one-scenario file against a running server; its figures."""
    out.unlink(missing_ok=True)
    site.run_client(handle, scenarios, out, client_name, labels, timeout_s)
    (scenario,) = load_result(out).scenarios
    return Measurement(qps=scenario.qps, p99_ms=scenario.p99_ms, p50_ms=scenario.p50_ms)


class SiteMeasure:
    """Measure settings on a site: start a server with them, run the load client's short
    scenario against it, stop the server. Candidate files go to `work_dir`; the server and
    the client are named `name`-server and `name`-client."""

    def __init__(
        self,
        site: Site,
        prepared: dict[str, Any],
        space: AutotuneConfig,
        work_dir: Path,
        name: str,
        labels: dict[str, str],
    ) -> None:
        self.site = site
        self.prepared = prepared
        self.work_dir = work_dir
        self.name = name
        self.labels = labels
        self.count = 0
        self.timeout_s = 2 * space.measure_s + space.warmup_s + 120
        work_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(prepared["model_dir"]) / TOKENIZER_FILE, work_dir / TOKENIZER_FILE)
        self.scenarios = write_scenario_file(
            work_dir / "scenarios.json", tuning_scenarios(space, {"purpose": "autotune"})
        )

    def __call__(self, settings: dict[str, Any]) -> Measurement:
        self.count += 1
        log_path = self.work_dir / f"server-{self.count}.log"
        out = self.work_dir / f"candidate-{self.count}.json"
        try:
            handle = self.site.start_server(
                self.prepared, f"{self.name}-server", self.labels, log_path, settings=settings
            )
        except EmbenchError as exc:  # e.g. settings this server refuses: not a winner
            log.warning("autotune: a server with %s did not start: %s", settings, exc)
            return Measurement(qps=0.0, p99_ms=None, error=str(exc).splitlines()[0][:300])
        try:
            return measure_slice(
                self.site,
                handle,
                self.scenarios,
                out,
                f"{self.name}-client",
                self.labels,
                self.timeout_s,
            )
        finally:
            self.site.stop_server(handle, log_path)


def tune(
    site: Site,
    prepared: dict[str, Any],
    base_settings: dict[str, Any],
    limits: dict[str, Any],
    space: AutotuneConfig,
    work_dir: Path,
    name: str,
    labels: dict[str, str],
) -> dict[str, Any]:
    """The tuning record of a prepared target on a site: `settings` (the server settings to
    benchmark with), the default's and the tuned QPS and their ratio (1 when the default
    stays; `best_ratio`: the best found against the default), every candidate, whether
    the cache answered. Cached per host fingerprint (see the module's doc). `name` prefixes
    the names of the containers (or processes) it starts."""
    started = time.monotonic()
    runtime = prepared["runtime"]
    fingerprint = site.host_fingerprint(f"{name}-fingerprint", labels)
    key = cache_key(
        hardware_key=str(fingerprint["hardware_key"]),
        limits=limits,
        manifest_sha256=prepared["manifest_sha256"],
        server_build=site.server_build(prepared),
        runtime=runtime,
        base_settings=base_settings,
        space=space,
    )
    cached = read_cache(key)
    if cached is not None:
        log.info(
            "autotune: cached %s (%s), measured %s", key[:12], cached["settings"], cached["at"]
        )
        return {**cached, "cache_hit": True}
    measure = SiteMeasure(site, prepared, space, work_dir, name, labels)
    best, candidates = coordinate_descent(
        base_settings, axis_options(space, runtime), measure, runtime, space.max_candidates
    )
    default_qps = candidates[0]["qps"]
    rounds: list[dict[str, float]] = []
    best_ratio: float | None = 1.0  # the best found against the default, interleaved
    if effective(best, runtime) == effective(base_settings, runtime):
        chosen, tuned_qps = base_settings, default_qps
    else:
        for _ in range(space.rounds):  # interleaved: drift hits both alike
            rounds.append({"default": measure(base_settings).qps, "best": measure(best).qps})
        wins, best_ratio = confirm(
            [r["default"] for r in rounds], [r["best"] for r in rounds], space.margin
        )
        chosen = best if wins else base_settings
        default_qps = statistics.fmean(r["default"] for r in rounds)
        tuned_qps = statistics.fmean(r["best" if wins else "default"] for r in rounds)
    record = {
        "version": TUNING_VERSION,
        "cache_key": key,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware_key": fingerprint["hardware_key"],
        "runtime": runtime,
        "default_settings": base_settings,
        "settings": chosen,
        "changed": {k: v for k, v in chosen.items() if base_settings.get(k) != v},
        "best_found": best,
        "kept_default": chosen is base_settings,
        "default_qps": round(default_qps, 2),
        "tuned_qps": round(tuned_qps, 2),
        "ratio": round(tuned_qps / default_qps, 4) if default_qps > 0 else None,
        "best_ratio": _round(best_ratio, 4),
        "margin": space.margin,
        "rounds": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
        "candidates": candidates,
        "servers_started": measure.count,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_cache(key, record)
    log.info(
        "autotune: %s (default %.1f QPS, tuned %.1f QPS, x%s) in %.0f s, %d servers",
        "kept the default" if record["kept_default"] else f"chose {record['changed']}",
        default_qps,
        tuned_qps,
        record["ratio"],
        record["seconds"],
        measure.count,
    )
    return {**record, "cache_hit": False}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)
