"""A/B in one run: a candidate against a baseline (two model variants, two runtimes, two server
images or two sets of server settings), measured interleaved on the same host in the same run.

The two servers run side by side on the host's server cores (the idle one sleeps); the load
client measures short closed-loop slices against one, then the other, alternating which goes
first (A B, B A, ...), so a host that drifts during the run hits both alike. Each pair of
adjacent slices gives one ratio candidate/baseline per metric; the ratio reported is the
geometric mean over the pairs, with the 95% Student-t interval of the mean log-ratio (the
pairs are the observations, so the interval holds however requests within a slice
correlate). The verdict, at the stated precision p:

- "no difference": the whole interval lies within [1/(1+p), 1+p];
- "faster" / "slower": the interval excludes 1, on the candidate's better / worse side
  (throughput higher, latency lower is better);
- "inconclusive": neither (more slices would tell).

This is what a release pipeline asks ("is this candidate slower than what we run now?")
without the night-to-night noise of comparing against history."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from client.stats import mean_interval
from embench.bench import write_scenario_file
from embench.config import AppConfig
from embench.errors import ConfigError, params_error
from embench.launch.handle import ServerHandle
from embench.launch.site import open_site
from embench.served_parity import check_target_parity
from embench.steps import TOKENIZER_FILE, RunContext, client_name, server_name
from embench.tuning import closed_slice_scenarios, measure_slice
from server.config import ServerSettings

log = logging.getLogger(__name__)

SIDES = ("baseline", "candidate")
# Each metric and which way is better for the candidate.
METRICS: dict[str, Literal["higher", "lower"]] = {
    "qps": "higher",
    "p50_ms": "lower",
    "p99_ms": "lower",
}
Verdict = Literal["faster", "slower", "no difference", "inconclusive", "not measured"]


class ABSide(BaseModel):
    """One side of the comparison: what its server runs."""

    model_config = ConfigDict(extra="forbid")

    runtime: str = Field(default="onnx", description="onnx, torch or openvino")
    variant: str = Field(default="fp32", description="a variant models.yaml lists for the runtime")
    image: str | None = Field(
        default=None, description="a server image to run instead of the runtime's configured one"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="server settings for this side (EMBENCH_* names in lower case, e.g. "
        "workers, threads, max_batch_tokens)",
    )

    def label(self) -> str:
        extra = [f"image={self.image}"] if self.image else []
        extra += [f"{k}={v}" for k, v in sorted(self.settings.items())]
        return f"{self.runtime}/{self.variant}" + (f" ({', '.join(extra)})" if extra else "")


class ABParams(BaseModel):
    """The A/B DAG's params."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a model id from config/models.yaml")
    baseline: ABSide = Field(default_factory=ABSide)
    candidate: ABSide = Field(default_factory=ABSide)
    slices: int = Field(default=8, ge=2, le=50, description="measured pairs of slices")
    slice_s: float = Field(default=5.0, ge=1.0, le=120.0, description="measured seconds a slice")
    warmup_s: float = Field(default=1.0, ge=0.0, le=60.0, description="unmeasured, per slice")
    concurrency: int = Field(default=16, ge=1, le=512, description="closed loop, in requests")
    texts_per_request: int = Field(default=1, ge=1, le=256)
    precision: float = Field(
        default=0.05, gt=0.0, lt=1.0, description="relative change below which there is none"
    )
    provisioner: Literal["local", "ssh", "ec2"] = "local"
    launcher: Literal["auto", "docker", "process"] = "auto"


def parse_ab(params: dict[str, Any], config: AppConfig) -> ABParams:
    """The params, checked against models.yaml and the server's settings; errors name the
    field ("candidate.variant: ...")."""
    try:
        ab = ABParams.model_validate({k: v for k, v in params.items() if v is not None})
    except ValidationError as exc:
        raise params_error("A/B params", exc) from None
    model = config.model(ab.model)  # names the known ids when unknown
    targets = model.targets()
    known_settings = set(ServerSettings.model_fields) - {"model_dir", "runtime", "port", "host"}
    for name in SIDES:
        side: ABSide = getattr(ab, name)
        if (side.runtime, side.variant) not in targets:
            listed = ", ".join(f"{r}/{v}" for r, v in targets)
            raise ConfigError(
                f"A/B params: {name}: {ab.model} has no {side.runtime}/{side.variant} in "
                f"models.yaml; expected one of: {listed}"
            )
        unknown = sorted(set(side.settings) - known_settings)
        if unknown:
            raise ConfigError(
                f"A/B params: {name}.settings: unknown server setting {unknown[0]!r}; "
                f"expected some of: {', '.join(sorted(known_settings))}"
            )
    return ab


def ab_targets(params: dict[str, Any], config: AppConfig) -> list[dict[str, Any]]:
    """The two targets to prepare, baseline first."""
    ab = parse_ab(params, config)
    return [
        {
            "model": ab.model,
            "runtime": side.runtime,
            "variant": side.variant,
            "repetition": 1,
            "scenarios": [],
            "ab_side": name,
            "image": side.image,
            "server_settings": side.settings or None,
        }
        for name, side in ((n, getattr(ab, n)) for n in SIDES)
    ]


def provisioning_params(params: dict[str, Any], config: AppConfig) -> dict[str, Any]:
    """The benchmark DAG's params that provision the host for these targets (one slot)."""
    ab = parse_ab(params, config)
    return {
        "models": [ab.model],
        "runtimes": sorted({ab.baseline.runtime, ab.candidate.runtime}),
        "variants": sorted({ab.baseline.variant, ab.candidate.variant}),
        "provisioner": ab.provisioner,
        "launcher": ab.launcher,
    }


# ---- measuring ------------------------------------------------------------------------------
def measure(
    prepared: list[dict[str, Any]],
    provisioned: dict[str, Any],
    params: dict[str, Any],
    ctx: RunContext,
    config: AppConfig,
) -> dict[str, Any]:
    """Start both servers on the host, check each one's parity through its API, measure the
    interleaved slices, stop both. Returns the record (also written to the run's ab.json)."""
    ab = parse_ab(params, config)
    by_side = {target["ab_side"]: target for target in prepared}
    work = ctx.run_dir() / "ab"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(by_side["baseline"]["model_dir"]) / TOKENIZER_FILE, work / TOKENIZER_FILE)
    labels = {**ctx.labels(), "purpose": "ab"}
    scenarios = write_scenario_file(
        work / "slice.json",
        closed_slice_scenarios(
            name="ab",
            concurrency=ab.concurrency,
            measure_s=ab.slice_s,
            warmup_s=ab.warmup_s,
            texts_per_request=ab.texts_per_request,
            labels={"purpose": "ab"},
        ),
    )
    timeout_s = 2 * ab.slice_s + ab.warmup_s + 120
    server_prefix, client = server_name(ctx), client_name(ctx)
    slices: list[dict[str, Any]] = []
    parity: dict[str, float] = {}
    handles: dict[str, ServerHandle] = {}
    with open_site(provisioned, config) as site:
        try:
            for name in SIDES:  # each in a folder of its own: its log, its process record
                target = by_side[name]
                site.ship(target)
                handles[name] = site.start_server(
                    target,
                    f"{server_prefix}-{name}",
                    {**ctx.container_labels(), "ab_side": name},
                    work / name / "server.log",
                    settings=target.get("server_settings"),
                )
                gate = check_target_parity(target, handles[name].url, handles[name].name, config)
                parity[name] = round(gate.min, 6)
            for i in range(ab.slices):
                order = SIDES if i % 2 == 0 else SIDES[::-1]
                pair: dict[str, Any] = {"order": list(order)}
                for name in order:
                    out = work / f"slice-{i + 1}-{name}.json"
                    figures = measure_slice(
                        site, handles[name], scenarios, out, client, labels, timeout_s
                    )
                    pair[name] = figures.to_dict()
                slices.append(pair)
                log.info(
                    "A/B slice %d/%d: baseline %.1f QPS, candidate %.1f QPS",
                    i + 1,
                    ab.slices,
                    pair["baseline"]["qps"],
                    pair["candidate"]["qps"],
                )
        finally:
            for name, handle in handles.items():
                site.stop_server(handle, work / name / "server.log")
    record = {
        "model": ab.model,
        "baseline": ab.baseline.label(),
        "candidate": ab.candidate.label(),
        "params": ab.model_dump(),
        "parity_min_cosine": parity,
        "slices": slices,
    }
    (work / "ab.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


# ---- judging --------------------------------------------------------------------------------
def compare(record: dict[str, Any], precision: float) -> list[dict[str, Any]]:
    """Per metric: the candidate/baseline ratio over the slice pairs, its 95% interval and the
    verdict at the stated precision (see the module's doc)."""
    target = f"{record['model']}: {record['candidate']} vs {record['baseline']}"
    verdicts = []
    for metric, better in METRICS.items():
        logs = []
        for pair in record["slices"]:
            base, cand = pair["baseline"].get(metric), pair["candidate"].get(metric)
            if base and cand and base > 0 and cand > 0:
                logs.append(math.log(cand / base))
        verdicts.append(
            {
                "target": target,
                "metric": metric,
                "pairs": len(logs),
                **judge(logs, better, precision),
            }
        )
    return verdicts


def judge(
    log_ratios: list[float], better: Literal["higher", "lower"], precision: float
) -> dict[str, Any]:
    interval = mean_interval(log_ratios)
    if interval is None:
        return {"ratio": None, "low": None, "high": None, "verdict": "not measured"}
    ratio = math.exp(sum(log_ratios) / len(log_ratios))
    low, high = math.exp(interval[0]), math.exp(interval[1])
    verdict: Verdict
    if low >= 1 / (1 + precision) and high <= 1 + precision:
        verdict = "no difference"
    elif low > 1 or high < 1:
        candidate_higher = low > 1
        verdict = "faster" if candidate_higher == (better == "higher") else "slower"
    else:
        verdict = "inconclusive"
    return {
        "ratio": round(ratio, 4),
        "low": round(low, 4),
        "high": round(high, 4),
        "precision": precision,
        "verdict": verdict,
    }


def table(verdicts: list[dict[str, Any]]) -> list[str]:
    """The verdicts as Markdown table rows (header first)."""
    rows = [
        "| metric | candidate / baseline | 95% interval | pairs | verdict |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        if v["ratio"] is None:
            rows.append(f"| {v['metric']} | - | - | {v['pairs']} | {v['verdict']} |")
        else:
            rows.append(
                f"| {v['metric']} | {v['ratio']:.3f} | [{v['low']:.3f}, {v['high']:.3f}] | "
                f"{v['pairs']} | **{v['verdict']}** |"
            )
    return rows


def write_report(record: dict[str, Any], verdicts: list[dict[str, Any]], run_dir: Path) -> Path:
    precision = record["params"]["precision"]
    lines = [
        f"# A/B: {record['model']}",
        "",
        f"- baseline: {record['baseline']}",
        f"- candidate: {record['candidate']}",
        f"- {len(record['slices'])} interleaved pairs of {record['params']['slice_s']:g} s "
        f"slices at concurrency {record['params']['concurrency']}; precision "
        f"{precision:.0%}",
        f"- parity (min cosine through the API): {record['parity_min_cosine']}",
        "",
        *table(verdicts),
        "",
        "| pair | order | baseline QPS | candidate QPS | baseline p50 ms | candidate p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for i, pair in enumerate(record["slices"], 1):
        b, c = pair["baseline"], pair["candidate"]
        lines.append(
            f"| {i} | {' then '.join(pair['order'])} | {b['qps']:.1f} | {c['qps']:.1f} | "
            f"{_ms(b.get('p50_ms'))} | {_ms(c.get('p50_ms'))} |"
        )
    path = run_dir / "ab" / "ab.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
