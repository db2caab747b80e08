"""Runtimes compared: per model of one pipeline run, each (runtime, variant)'s figures and each
relative to PyTorch eager fp32 measured in the same run, on the same host; and each server's
throughput relative to the peer server infinity-emb's, when the run measured it.

Only figures of the same run are put side by side: the host changes from one run to the next
(31% in throughput an hour apart on the shared machines), so a ratio across runs would be
mostly noise. Repetitions of a target are pooled by their median."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from client.result import INSTANCE_TYPE_LABEL

REFERENCE = ("torch", "fp32")  # the model as its authors run it
PEER = ("infinity", "fp32")  # the peer server, on the same ONNX fp32 file as onnx/fp32
PEER_MEASURES = ("qps_c1", "qps_heavy", "peak_qps")  # throughput: what a server adds or loses


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    higher_is_better: bool


def measures(heavy_concurrency: int | None) -> list[Measure]:
    heavy = f"c{heavy_concurrency}" if heavy_concurrency else "highest concurrency"
    return [
        Measure("qps_c1", "QPS c1", True),
        Measure("qps_heavy", f"QPS {heavy}", True),
        Measure("peak_qps", "peak QPS under SLO", True),
        Measure("p50_c1_ms", "p50 ms c1", False),
        Measure("p99_c1_ms", "p99 ms c1", False),
        Measure("rss_mb", "RSS MB", False),
        Measure("cold_start_s", "cold start s", False),
        Measure("parity_mean_cosine", "parity cos", True),
        # what a million embeddings cost (priced runs only: embench.cost)
        Measure("usd_per_million_heavy", f"$/M emb. {heavy}", False),
        Measure("usd_per_million_peak", "$/M emb. at peak", False),
    ]


@dataclass
class Entry:
    runtime: str
    variant: str
    values: dict[str, float | None]
    relative: dict[str, float | None] = field(default_factory=dict)  # value / reference's
    versus_peer: dict[str, float | None] = field(default_factory=dict)  # value / the peer's


@dataclass
class ModelComparison:
    model: str
    heavy_concurrency: int | None
    reference: str | None  # "torch/fp32" when the run measured it
    measures: list[Measure]
    entries: list[Entry]
    peer: str | None = None  # "infinity/fp32" when the run measured it
    instance_type: str | None = None  # runtimes are compared on one instance type at a time

    @property
    def title(self) -> str:
        return f"{self.model} on {self.instance_type}" if self.instance_type else self.model

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "title": self.title}


def _median(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def _closed(rows: Sequence[dict[str, Any]], concurrency: int) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("mode") == "closed" and r.get("concurrency") == concurrency]


def compare_runtimes(
    rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]
) -> list[ModelComparison]:
    """`rows` and `runs` as collect reads them (one scenario of one stored run
    per row; one stored run per run). Invalid figures are left out, never compared; a measure
    no target has (the peak, without a search scenario) is left out of the table."""
    comparisons = []
    for model, instance_type in sorted(
        {(str(r["model"]), r.get(INSTANCE_TYPE_LABEL) or "") for r in rows}
    ):
        of_model = [
            r
            for r in rows
            if str(r["model"]) == model
            and (r.get(INSTANCE_TYPE_LABEL) or "") == instance_type
            and r.get("valid") is not False
        ]
        closed = [r.get("concurrency") or 0 for r in of_model if r.get("mode") == "closed"]
        heavy = max((c for c in closed if c > 1), default=None)
        targets = sorted({(str(r["runtime"]), str(r["variant"])) for r in of_model})
        entries = []
        for runtime, variant in targets:
            mine = [r for r in of_model if (r["runtime"], r["variant"]) == (runtime, variant)]
            their_runs = [
                run
                for run in runs
                if (run["model"], run["runtime"], run["variant"]) == (model, runtime, variant)
                and (run.get(INSTANCE_TYPE_LABEL) or "") == instance_type
            ]
            c1 = _closed(mine, 1)
            rss = _median([r.get("server_rss_bytes_max") for r in mine])
            parity = [(run.get("parity") or {}).get("mean_cosine") for run in their_runs]
            values = {
                "qps_c1": _median([r.get("qps") for r in c1]),
                "qps_heavy": _median([r.get("qps") for r in _closed(mine, heavy or -1)]),
                "peak_qps": _median([r.get("peak_qps") for r in mine if r.get("search_over")]),
                "p50_c1_ms": _median([r.get("p50_ms") for r in c1]),
                "p99_c1_ms": _median([r.get("p99_ms") for r in c1]),
                "rss_mb": rss / 1e6 if rss is not None else None,
                "cold_start_s": _median([run.get("cold_start_s") for run in their_runs]),
                "parity_mean_cosine": _median(parity),
                "usd_per_million_heavy": _median(
                    [r.get("usd_per_million") for r in _closed(mine, heavy or -1)]
                ),
                "usd_per_million_peak": _median(
                    [r.get("usd_per_million_at_peak") for r in mine if r.get("search_over")]
                ),
            }
            entries.append(Entry(runtime, variant, values))
        reference = next((e for e in entries if (e.runtime, e.variant) == REFERENCE), None)
        peer = next((e for e in entries if (e.runtime, e.variant) == PEER), None)
        for entry in entries:
            entry.relative = _ratios(entry, reference, entry.values)
            entry.versus_peer = _ratios(entry, peer, {k: entry.values[k] for k in PEER_MEASURES})
        if reference is not None:  # the reference leads the table
            entries.remove(reference)
            entries.insert(0, reference)
        measured = [m for m in measures(heavy) if any(e.values[m.key] is not None for e in entries)]
        comparisons.append(
            ModelComparison(
                model=model,
                heavy_concurrency=heavy,
                reference="/".join(REFERENCE) if reference else None,
                measures=measured,
                entries=entries,
                peer="/".join(PEER) if peer else None,
                instance_type=instance_type or None,
            )
        )
    return comparisons


def _ratios(
    entry: Entry, base: Entry | None, values: dict[str, float | None]
) -> dict[str, float | None]:
    """Each of `values` over `base`'s (None where either is missing)."""
    ratios: dict[str, float | None] = {}
    for key, value in values.items():
        of_base = base.values.get(key) if base is not None else None
        ratios[key] = value / of_base if value is not None and of_base else None
    return ratios
