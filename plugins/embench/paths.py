"""Where embench keeps its files. Everything is overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """EMBENCH_DATA_DIR, else ~/.local/share/embench: results, reports, the SQLite store."""
    if env := os.environ.get("EMBENCH_DATA_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "embench"


def cache_dir() -> Path:
    """EMBENCH_CACHE_DIR, else <data dir>/cache: prepared model artifacts, keyed by content."""
    if env := os.environ.get("EMBENCH_CACHE_DIR"):
        return Path(env)
    return data_dir() / "cache"
