"""The run report's "Tuned per host" section: from the tuning record each result carries in
its labels, through the store, to the Markdown and HTML report (default vs tuned QPS, the
ratio, what was chosen, whether the cache answered)."""

from __future__ import annotations

import json

import pytest

from embench.report import TUNING_LABEL, collect, html, markdown, resolve_ingest_keys
from embench.report.tuning import settings_text
from embench.store.db import make_engine, session_scope, upgrade_to_head
from embench.store.ingest import ingest_result
from tests.store.factory import MODEL, run_result

DEFAULT = {"workers": 2, "threads": 1, "spinning": False}
TUNED = {
    "settings": {**DEFAULT, "workers": 1, "threads": 2, "spinning": True},
    "default_settings": DEFAULT,
    "changed": {"workers": 1, "threads": 2, "spinning": True},
    "kept_default": False,
    "default_qps": 120.0,
    "tuned_qps": 138.0,
    "ratio": 1.15,
    "candidates": [{"qps": 120.0}, {"qps": 130.0}, {"qps": 139.0}],
    "cache_hit": False,
    "at": "2026-11-28T02:00:00+00:00",
}
KEPT = {
    **TUNED,
    "settings": DEFAULT,
    "changed": {},
    "kept_default": True,
    "tuned_qps": 120.0,
    "ratio": 1.0,
    "cache_hit": True,
}


@pytest.fixture(scope="module")
def stored_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('tuning') / 'results.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    for index, (runtime, variant, record) in enumerate(
        (
            ("onnx", "fp32", TUNED),
            ("onnx", "fp32", TUNED),  # a second repetition of the same tuned target
            ("openvino", "int8", KEPT),
            ("torch", "fp32", None),  # not tuned
        )
    ):
        labels = {TUNING_LABEL: json.dumps(record)} if record else {}
        ingest_result(
            engine,
            run_result(runtime=runtime, variant=variant, labels=labels, repetition=index),
        )
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def report_data(stored_url: str):
    engine = make_engine(stored_url)
    with session_scope(engine) as session:
        keys, title = resolve_ingest_keys(session, "scheduled__night-0")
        data = collect(session, keys, title)
    engine.dispose()
    return data


def test_each_tuned_target_is_one_row(report_data) -> None:
    rows = {(r["runtime"], r["variant"]): r for r in report_data.tuning}
    assert set(rows) == {("onnx", "fp32"), ("openvino", "int8")}
    onnx = rows[("onnx", "fp32")]
    assert (onnx["default_qps"], onnx["tuned_qps"], onnx["ratio"]) == (120.0, 138.0, 1.15)
    assert onnx["chosen"] == "1 worker x 2 threads, spinning"
    assert onnx["candidates"] == 3 and onnx["cache_hit"] is False
    assert rows[("openvino", "int8")]["chosen"] == "the default"


def test_markdown_and_html_show_default_against_tuned(report_data) -> None:
    text = markdown(report_data)
    assert "## Tuned per host" in text
    assert (
        f"| {MODEL} | onnx | fp32 | 120.0 | 138.0 | 1.150 | 1 worker x 2 threads, spinning | 3 "
        "| measured |"
    ) in text
    assert "| openvino | int8 | 120.0 | 120.0 | 1.000 | the default | 3 | hit (2026-11-28" in text
    page = html(report_data, plotly_src="/plotly.js")
    assert '<table class="comparison tuning" id="tuning">' in page
    assert "1 worker x 2 threads, spinning" in page and "138.0" in page


def test_no_tuning_no_section(report_data) -> None:
    from dataclasses import replace

    untuned = replace(report_data, tuning=[])
    assert "Tuned per host" not in markdown(untuned)
    assert "Tuned per host" not in html(untuned, plotly_src="/plotly.js")


def test_settings_text() -> None:
    assert settings_text({"workers": 2, "threads": 1}) == "2 workers x 1 thread"
    assert settings_text({"graph_optimization_level": "basic", "spinning": False}) == (
        "graph_optimization_level basic, no spinning"
    )


def test_the_compare_runtimes_page_shows_the_tuning_too(stored_url: str) -> None:
    from fastapi.testclient import TestClient

    from tests.ui.conftest import authenticated_app

    with TestClient(authenticated_app(stored_url)) as client:
        page = client.get("/runtimes", params={"run": "scheduled__night-0"}).text
    assert "<h2>Tuned per host</h2>" in page
    assert '<table class="comparison tuning" id="tuning">' in page
    assert "1 worker x 2 threads, spinning" in page
