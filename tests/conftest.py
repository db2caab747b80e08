"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package; never ask a hub

from embench.config import AppConfig, load_config
from embench.prepare import PreparedVariant, prepare_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def app_config() -> AppConfig:
    return load_config(REPO_ROOT / "config")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact cache private to this test session."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def prepared_minilm(app_config: AppConfig, model_cache: Path) -> dict[str, PreparedVariant]:
    """The default model converted for real into all three variants, parity-gated."""
    prepared = prepare_model(
        app_config, DEFAULT_MODEL, ["fp32", "optimized", "int8"], cache_root=model_cache
    )
    return {p.variant: p for p in prepared}
