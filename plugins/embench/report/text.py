"""How the report's figures read, in Markdown and in HTML alike: the table columns, a cell's
text, a figure with its interval, and the texts of ratios, dollars and parity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embench.report.runtimes import PEER_MEASURES, Entry, ModelComparison
from embench.store.detect import INTERVALS

COLUMNS: tuple[tuple[str, str], ...] = (
    ("variant", "variant"),
    ("runtime", "runtime"),
    ("scenario", "scenario"),
    ("qps", "QPS"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("p999_ms", "p99.9 ms"),
    ("server_cpu_pct_mean", "server CPU %"),
    ("server_rss_bytes_max", "RSS MB"),
    ("model_load_ms", "load ms"),
    ("parity_mean_cosine", "parity cos"),
    ("valid", "valid"),
)
PEAK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("variant", "variant"),
    ("runtime", "runtime"),
    ("scenario", "scenario"),
    ("slo_p99_ms", "SLO p99 ms"),
    ("search_over", "over"),
    ("peak_load", "peak load"),
    ("peak_qps", "peak QPS"),
    ("p99_ms", "p99 ms at peak"),
    ("search_probes", "probes"),
    ("search_reason", "search"),
)
# A figure's own interval columns (texts/s and tokens/s only borrow QPS' for the detector).
OWN_INTERVALS: dict[str, tuple[str, str]] = {
    metric: (low, high) for metric, (low, high, of) in INTERVALS.items() if of == metric
}
COLD_START_ABSENT = (
    "not stored: the result documents of this run carry no server start-to-healthy time "
    "(it is logged by the start_server task only)"
)


def cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "server_rss_bytes_max":
        return f"{value / 1e6:.0f}"
    if key == "valid":
        return "yes" if value else "NO"
    if key == "parity_mean_cosine" and isinstance(value, float):
        return f"{value:.5f}"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def figure(row: dict[str, Any], key: str) -> str:
    """A figure with its interval when it has one ("152.3 [148.1-156.0]"); a percentile
    its sample count cannot support reads "n/a" (the notes say what it needs)."""
    value = row.get(key)
    if value is None and key.removesuffix("_ms") in (row.get("percentile_notes") or {}):
        return "n/a"
    text = cell(key, value)
    bounds = OWN_INTERVALS.get(key)
    if value is None or bounds is None:
        return text
    low, high = row.get(bounds[0]), row.get(bounds[1])
    if low is None or high is None:
        return text
    return f"{text} [{cell(key, low)}-{cell(key, high)}]"


def who_text(item: dict[str, Any]) -> str:
    """model/variant/runtime of a run or a row (what it has of them)."""
    return "/".join(str(item.get(k)) for k in ("model", "variant", "runtime") if item.get(k))


def parity_text(parity: dict[str, Any]) -> str:
    mean, low = to_float(parity.get("mean_cosine")), to_float(parity.get("min_cosine"))
    if mean is None:
        return "-"
    return f"{mean:.5f} / {low:.5f}" if low is not None else f"{mean:.5f}"


def to_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def rate_text(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def usd_text(value: float | None) -> str:
    """A dollar figure with four significant digits ("0.1654", "2.48"); "-" when absent."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def value_text(key: str, value: float | None) -> str:
    """A figure of the runtimes comparison."""
    if value is None:
        return "-"
    if key == "parity_mean_cosine":
        return f"{value:.5f}"
    if key.startswith("usd_"):
        return f"{value:.4g}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def ratio_text(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def entry_cells(comparison: ModelComparison, entry: Entry) -> list[str]:
    """An entry's figures as text, each followed by its ratio when there is one."""
    cells = []
    for m in comparison.measures:
        ratio = entry.relative[m.key]
        cells.append(
            value_text(m.key, entry.values[m.key])
            + (f" ({ratio_text(ratio)})" if ratio is not None else "")
        )
    return cells


def peer_sentence(comparison: ModelComparison, escape: Callable[[Any], str] = str) -> str | None:
    """One line: each other target's throughput over the peer server's, same run."""
    if comparison.peer is None:
        return None
    shown = [m for m in comparison.measures if m.key in PEER_MEASURES]
    parts = []
    for entry in comparison.entries:
        if f"{entry.runtime}/{entry.variant}" == comparison.peer:
            continue
        ratios = " / ".join(ratio_text(entry.versus_peer.get(m.key)) for m in shown)
        parts.append(f"{escape(entry.runtime)}/{escape(entry.variant)} {ratios}")
    labels = " / ".join(m.label for m in shown)
    return f"Against the peer server {comparison.peer} in this run ({labels}): " + "; ".join(parts)
