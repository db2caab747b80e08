"""The terminal console of the CLI: rich on a terminal; in logs and CI, wide enough for the
tables (rich would otherwise fold them to 80 columns)."""

from __future__ import annotations

from rich.console import Console


def make_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=160)


stdout = make_console()
