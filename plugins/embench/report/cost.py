"""The report's cost section, as data: per model and scenario, each configuration ranked by
what a million embeddings cost at its measured throughput (prices and the arithmetic:
embench.cost)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from client.result import INSTANCE_TYPE_LABEL
from embench.cost import LOCAL, OVERRIDES, PRICE_LABEL, PRICE_SOURCE_LABEL, usd_per_million


def how_to_price(instance_type: str | None, host: str | None) -> str:
    """Where a price for this host would go."""
    key = instance_type or host or LOCAL
    where = f"{OVERRIDES}[{key}]"
    return f"set {where}" + (" or add it to prices.yaml" if instance_type else "")


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
    """`rows` as collect reads them (one scenario of one stored run each, with
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
