"""What a benchmark costs: the host's price per hour, and each result's cost per million
embeddings at its measured throughput.

The price comes from benchmark.yaml's `cost.usd_per_hour` (by instance type, by an ssh host's
name, or `local` for this machine), else from the shipped price table (config/prices.yaml) by
instance type. The pipeline records it in every result's labels (`price_labels`), so a result
keeps the price it was measured at, with its source; the store's queries and the reports read
it back (`price_from_labels`) and compute

    $ per million embeddings = price per hour / (embeddings per second x 3600) x 1e6

and the benchmark's own cost, price x the run's wall time. A host with no price gets none:
the run still works, its results carry no cost, and the report says how to set one."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from client.result import INSTANCE_TYPE_LABEL

if TYPE_CHECKING:
    from embench.config.loader import AppConfig

# The result labels a priced run carries (INSTANCE_TYPE_LABEL is the result schema's own).
PRICE_LABEL = "price_usd_per_hour"
PRICE_SOURCE_LABEL = "price_source"
PRICE_LABELS: tuple[str, ...] = (INSTANCE_TYPE_LABEL, PRICE_LABEL, PRICE_SOURCE_LABEL)
HOST_LABEL = "host"  # the benchmark host's name, as embench.steps.host_labels sets it
LOCAL = "local"  # benchmark.yaml cost.usd_per_hour's key for this machine
OVERRIDES = "benchmark.yaml cost.usd_per_hour"


@dataclass(frozen=True)
class HostPrice:
    usd_per_hour: float
    source: str  # "prices.yaml: <url> (as of 2026-06-17)", "benchmark.yaml cost.usd_per_hour[x]"
    as_of: str | None = None  # the source's date (None: the user's own figure)


def host_price(
    config: AppConfig, *, instance_type: str | None, host_name: str, provisioner: str
) -> HostPrice | None:
    """The host's price per hour: benchmark.yaml's override for its instance type, else for
    its name, else `local` (the local provisioner only), else the price table's entry for its
    instance type; None when none applies."""
    overrides = config.benchmark.cost.usd_per_hour
    keys = [instance_type, host_name, LOCAL if provisioner == "local" else None]
    for key in keys:
        if key and key in overrides:
            return HostPrice(float(overrides[key]), f"{OVERRIDES}[{key}]")
    table = config.prices
    if instance_type and table is not None and instance_type in table.prices:
        entry = table.prices[instance_type]
        name = config.benchmark.cost.price_table
        return HostPrice(
            float(entry.usd_per_hour),
            f"{name}: {entry.source} (as of {entry.as_of})",
            str(entry.as_of),
        )
    return None


def price_labels(price: HostPrice | None, instance_type: str | None) -> dict[str, str]:
    """The labels that carry the price into the result (none for what is unknown)."""
    labels: dict[str, str] = {}
    if instance_type:
        labels[INSTANCE_TYPE_LABEL] = instance_type
    if price is not None:
        labels[PRICE_LABEL] = repr(float(price.usd_per_hour))
        labels[PRICE_SOURCE_LABEL] = price.source
    return labels


def price_from_labels(labels: Mapping[str, Any] | None) -> HostPrice | None:
    """The price a stored result was measured at (None: it carries none, or a bad one)."""
    labels = labels or {}
    try:
        value = float(labels.get(PRICE_LABEL))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return HostPrice(value, str(labels.get(PRICE_SOURCE_LABEL) or "result labels"))


def usd_per_million(usd_per_hour: float | None, embeddings_per_s: float | None) -> float | None:
    """Dollars per million embeddings at `embeddings_per_s` on a host of `usd_per_hour`: the
    host's price over what it embeds in an hour, times a million. None when either is
    missing or the throughput is not positive."""
    if usd_per_hour is None or embeddings_per_s is None:
        return None
    if not math.isfinite(embeddings_per_s) or embeddings_per_s <= 0:
        return None
    return usd_per_hour / (embeddings_per_s * 3600.0) * 1e6


def usd_for(usd_per_hour: float | None, seconds: float | None) -> float | None:
    """What `seconds` of a host of `usd_per_hour` cost (the benchmark's own cost)."""
    if usd_per_hour is None or seconds is None or seconds < 0:
        return None
    return usd_per_hour * seconds / 3600.0


def usd_text(value: float | None) -> str:
    """A dollar figure with four significant digits ("0.1654", "2.48"); "-" when absent."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


# ----------------------------------------------------------------- figures of stored results

COST_FIELDS: tuple[str, ...] = (
    INSTANCE_TYPE_LABEL,
    "host",
    PRICE_LABEL,
    PRICE_SOURCE_LABEL,
    "usd_per_million",
    "peak_texts_per_s",
    "usd_per_million_at_peak",
)


def scenario_costs(
    labels: Mapping[str, Any] | None,
    texts_per_s: float | None,
    peak_qps: float | None = None,
    texts_per_request: int | None = None,
) -> dict[str, Any]:
    """A stored scenario result's cost figures: its run's price and what a million
    embeddings cost at its measured throughput (texts/s), and for a search scenario at the
    peak under the SLO (peak QPS x texts per request)."""
    labels = labels or {}
    price = price_from_labels(labels)
    usd = price.usd_per_hour if price else None
    peak = peak_qps * texts_per_request if peak_qps is not None and texts_per_request else None
    return {
        INSTANCE_TYPE_LABEL: labels.get(INSTANCE_TYPE_LABEL) or None,
        "host": labels.get(HOST_LABEL) or None,
        PRICE_LABEL: usd,
        PRICE_SOURCE_LABEL: price.source if price else None,
        "usd_per_million": usd_per_million(usd, texts_per_s),
        "peak_texts_per_s": peak,
        "usd_per_million_at_peak": usd_per_million(usd, peak),
    }


def run_costs(labels: Mapping[str, Any] | None, wall_s: float | None) -> dict[str, Any]:
    """A stored run's price and its own cost: price x the run's wall time."""
    price = price_from_labels(labels)
    usd = price.usd_per_hour if price else None
    return {
        INSTANCE_TYPE_LABEL: (labels or {}).get(INSTANCE_TYPE_LABEL) or None,
        PRICE_LABEL: usd,
        PRICE_SOURCE_LABEL: price.source if price else None,
        "wall_s": wall_s,
        "run_usd": usd_for(usd, wall_s),
    }


def how_to_price(instance_type: str | None, host: str | None) -> str:
    """Where a price for this host would go."""
    key = instance_type or host or LOCAL
    where = f"{OVERRIDES}[{key}]"
    return f"set {where}" + (" or add it to prices.yaml" if instance_type else "")


# ------------------------------------------------------------------------------ ranking


@dataclass
class CostEntry:
    runtime: str
    variant: str
    instance_type: str | None
    host: str | None
    texts_per_s: float | None  # median over the pooled results
    usd_per_hour: float | None
    price_source: str | None
    usd_per_million: float | None  # at texts_per_s
    peak_texts_per_s: float | None = None
    usd_per_million_at_peak: float | None = None
    results: int = 1  # scenario results pooled (repetitions)
    how_to_price: str | None = None  # for an entry without a price

    @property
    def target(self) -> str:
        where = self.instance_type or self.host
        return f"{self.runtime}/{self.variant}" + (f" on {where}" if where else "")


@dataclass
class CostRanking:
    """One model and scenario: its configurations by cost per million embeddings, cheapest
    first, then those without a price."""

    model: str
    scenario: str
    ranked: list[CostEntry]
    unpriced: list[CostEntry]
    search: bool = False  # a search scenario: the peak under the SLO is priced too
    invalid: int = 0  # invalid results left out
    best: str | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def rank_by_cost(rows: Sequence[Mapping[str, Any]]) -> list[CostRanking]:
    """`rows` as embench.report.collect reads them (one scenario of one stored run each, with
    `scenario_costs`' fields). Per model and scenario, each configuration (runtime, variant,
    instance type or host) with its median throughput over repetitions, ranked by what a
    million embeddings cost at it; invalid results are left out."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((str(row["model"]), str(row["scenario"])), []).append(row)
    rankings = []
    for (model, scenario), of_group in sorted(groups.items()):
        valid = [r for r in of_group if r.get("valid") is not False]
        targets: dict[tuple[str, str, str | None, str | None], list[Mapping[str, Any]]] = {}
        for row in valid:
            key = (
                str(row["runtime"]),
                str(row["variant"]),
                row.get(INSTANCE_TYPE_LABEL),
                None if row.get(INSTANCE_TYPE_LABEL) else row.get("host"),
            )
            targets.setdefault(key, []).append(row)
        entries = []
        for (runtime, variant, instance_type, host), mine in targets.items():
            texts = _median([r.get("texts_per_s") for r in mine])
            usd = _median([r.get(PRICE_LABEL) for r in mine])
            peak = _median([r.get("peak_texts_per_s") for r in mine])
            source = next((r.get(PRICE_SOURCE_LABEL) for r in mine if r.get(PRICE_LABEL)), None)
            entries.append(
                CostEntry(
                    runtime=runtime,
                    variant=variant,
                    instance_type=instance_type,
                    host=host or next((r.get("host") for r in mine if r.get("host")), None),
                    texts_per_s=texts,
                    usd_per_hour=usd,
                    price_source=source,
                    usd_per_million=usd_per_million(usd, texts),
                    peak_texts_per_s=peak,
                    usd_per_million_at_peak=usd_per_million(usd, peak),
                    results=len(mine),
                    how_to_price=None if usd is not None else how_to_price(instance_type, host),
                )
            )
        ranked = sorted(
            (e for e in entries if e.usd_per_million is not None),
            key=lambda e: (e.usd_per_million, e.runtime, e.variant, e.instance_type or ""),
        )
        unpriced = sorted(
            (e for e in entries if e.usd_per_million is None),
            key=lambda e: (e.runtime, e.variant, e.instance_type or "", e.host or ""),
        )
        rankings.append(
            CostRanking(
                model=model,
                scenario=scenario,
                ranked=ranked,
                unpriced=unpriced,
                search=any(r.get("search_over") for r in of_group),
                invalid=len(of_group) - len(valid),
                best=ranked[0].target if ranked else None,
            )
        )
    return rankings


def markdown_section(
    rankings: Sequence[CostRanking],
    runs: Sequence[Mapping[str, Any]] = (),
    escape: Any = str,
) -> list[str]:
    """The report's "Cost per million embeddings" section (empty without results)."""
    if not rankings:
        return []
    lines = ["## Cost per million embeddings", ""]
    if not any(r.ranked for r in rankings):
        hints = sorted({e.how_to_price or "" for r in rankings for e in r.unpriced} - {""})
        return [
            *lines,
            "No price: none of these results' hosts has a price per hour, so no cost is "
            f"computed ({'; '.join(escape(h) for h in hints)}).",
            "",
        ]
    lines += [
        "Configurations ranked by what a million embeddings cost at their measured "
        "throughput (texts/s; repetitions pooled by median), at the price per hour each "
        "result was measured at: price / (texts/s x 3600) x 1e6.",
        "",
    ]
    for ranking in rankings:
        lines += [f"### {escape(ranking.model)} {escape(ranking.scenario)}", ""]
        peak = ["$/M at peak under SLO"] if ranking.search else []
        header = ["rank", "configuration", "texts/s", "$/hour", "$/M embeddings", *peak]
        lines.append("| " + " | ".join([*header, "price source"]) + " |")
        lines.append("|" + "---|" * (len(header) + 1))
        for index, entry in enumerate(ranking.ranked, 1):
            cells = [
                str(index),
                escape(entry.target),
                _rate(entry.texts_per_s),
                usd_text(entry.usd_per_hour),
                usd_text(entry.usd_per_million),
                *([usd_text(entry.usd_per_million_at_peak)] if ranking.search else []),
                escape(entry.price_source or "-"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for entry in ranking.unpriced:
            cells = [
                "-",
                escape(entry.target),
                _rate(entry.texts_per_s),
                "no price",
                "-",
                *(["-"] if ranking.search else []),
                escape(entry.how_to_price or "-"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if ranking.invalid:
            lines.append("")
            lines.append(f"{ranking.invalid} invalid result(s) left out.")
        lines.append("")
    priced = [run for run in runs if run.get(PRICE_LABEL) is not None]
    if priced:
        lines += ["### What the benchmark cost", ""]
        lines.append("| run | $/hour | wall time s | cost $ |")
        lines.append("|---|---|---|---|")
        for run in priced:
            who = "/".join(str(run[k]) for k in ("model", "variant", "runtime") if run.get(k))
            lines.append(
                f"| {escape(who)} | {usd_text(run.get(PRICE_LABEL))} | "
                f"{_rate(run.get('wall_s'))} | {usd_text(run.get('run_usd'))} |"
            )
        total = sum(run.get("run_usd") or 0.0 for run in priced)
        lines += [
            "",
            f"Total: ${usd_text(total)} for {len(priced)} priced run(s) (the client's "
            "wall time: warm-ups and measurements, not the host's start or model "
            "preparation).",
            "",
        ]
    return lines


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
