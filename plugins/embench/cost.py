"""What a benchmark costs: the host's price per hour, and each result's cost per million
embeddings at its measured throughput.

The price comes from benchmark.yaml's `cost.usd_per_hour` (by instance type, by an ssh host's
name, or `local` for this machine), else from the shipped price table (config/prices.yaml) by
instance type. The pipeline records it in every result's labels (`price_labels`), so a result
keeps the price it was measured at, with its source; the store's queries and the reports read
it back (`price_from_labels`) and compute

    $ per million embeddings = price per hour / (embeddings per second x 3600) x 1e6

and the benchmark's own cost, price x the run's wall time. A host with no price gets none:
the run still works, its results carry no cost, and the report says how to set one (the
report's ranking by cost: embench.report.cost)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
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
