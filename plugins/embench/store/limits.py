"""Row limits of the history listings, in one place for the API, the UI pages and the CLI
(`embench history`, `embench runs`), and the one parse of a whole number they accept.

A listing keeps the newest `limit` rows; the default fits a quarter of nightly runs of one
model's variants and scenarios, and the ceiling keeps one answer to a few megabytes. A limit
above the ceiling is refused, not cut. Light on imports: the CLI builds its parser from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embench.errors import EmbenchError

HISTORY_LIMIT_DEFAULT = 5_000
HISTORY_LIMIT_MAX = 20_000
RUNS_LIMIT_DEFAULT = 100
RUNS_LIMIT_MAX = 1_000


def check_limit(limit: int, maximum: int, name: str = "limit") -> int:
    """`limit` if it is a whole number from 1 to `maximum`; else EmbenchError naming it."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise EmbenchError(f"{name}: expected a whole number from 1 to {maximum}, got {limit!r}")
    return limit


def parse_limit(text: str, maximum: int, name: str = "limit") -> int:
    """A limit written as ASCII digits (str.isdigit() alone would let superscripts through,
    which int() refuses, and other scripts' digits), checked by check_limit."""
    if not (text.isascii() and text.isdigit()):
        raise EmbenchError(f"{name}: expected a whole number from 1 to {maximum}, got {text!r}")
    return check_limit(int(text), maximum, name)


@dataclass(frozen=True)
class Page:
    """Rows of a limited listing: `truncated` when more rows matched than `limit` kept."""

    rows: list[dict[str, Any]]
    limit: int
    truncated: bool
