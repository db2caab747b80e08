"""Runtimes compared within one pipeline run: each (runtime, variant)'s figures and their
ratios to PyTorch fp32 of the same run, in the Markdown and HTML report, the JSON API and the
"Compare runtimes" page (rendered in Chromium with its chart)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from embench.report import markdown
from embench.report.runtimes import compare_runtimes
from embench.store.db import make_engine, upgrade_to_head
from embench.store.ingest import ingest_result
from tests.store.factory import MODEL, run_result
from tests.ui import browser
from tests.ui.conftest import authenticated_app, report_data

DAG_RUN = "scheduled__night-0"
# (runtime, variant): QPS and p99 of both closed scenarios; torch fp32 is the reference
TARGETS = {
    ("torch", "fp32"): (100.0, 20.0),
    ("onnx", "int8"): (150.0, 12.0),
    ("openvino", "bf16"): (300.0, 8.0),
    ("infinity", "fp32"): (120.0, 15.0),  # the peer server
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('runtimes') / 'results.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    for index, ((runtime, variant), (qps, p99)) in enumerate(TARGETS.items()):
        ingest_result(
            engine,
            run_result(runtime=runtime, variant=variant, qps=qps, p99_ms=p99, repetition=index),
        )
    # another night's run of the same targets, three times faster: never mixed into this one
    for index, (runtime, variant) in enumerate(TARGETS):
        fast = run_result(1, runtime=runtime, variant=variant, qps=900.0, repetition=index)
        ingest_result(engine, fast)
    engine.dispose()
    return url


def comparison_of(url: str) -> Any:
    return report_data(url, DAG_RUN)


def test_each_target_is_put_against_pytorch_fp32_of_the_same_run(stored: str) -> None:
    data = comparison_of(stored)
    (model,) = data.comparison
    assert model.model == MODEL and model.reference == "torch/fp32"
    entries = {(e.runtime, e.variant): e for e in model.entries}
    assert set(entries) == set(TARGETS)
    for target, (qps, p99) in TARGETS.items():
        entry = entries[target]
        assert entry.values["qps_c1"] == pytest.approx(qps, rel=1e-6)
        assert entry.relative["qps_c1"] == pytest.approx(qps / 100.0, rel=1e-6)
        assert entry.relative["p99_c1_ms"] == pytest.approx(p99 / 20.0, rel=1e-6)
    text = markdown(data)
    assert "## Runtimes compared" in text
    assert f"### {MODEL} (each figure, then its ratio to torch/fp32 measured in this run)" in text
    assert "| openvino | bf16 | 300.0 (3.00x) |" in text
    # each server against the peer server infinity-emb, same run
    assert model.peer == "infinity/fp32"
    assert entries[("openvino", "bf16")].versus_peer["qps_c1"] == pytest.approx(2.5, rel=1e-6)
    assert entries[("infinity", "fp32")].versus_peer["qps_heavy"] == pytest.approx(1.0)
    assert (
        "Against the peer server infinity/fp32 in this run (QPS c1 / QPS c4): "
        "torch/fp32 0.83x / 0.83x; onnx/int8 1.25x / 1.25x; openvino/bf16 2.50x / 2.50x"
    ) in text


def test_without_the_reference_there_are_figures_but_no_ratios(stored: str) -> None:
    data = comparison_of(stored)
    rows = [r for r in data.rows if r["runtime"] != "torch"]
    runs = [r for r in data.runs if r["runtime"] != "torch"]
    (model,) = compare_runtimes(rows, runs)
    assert model.reference is None
    assert all(value is None for e in model.entries for value in e.relative.values())
    assert {e.values["qps_c1"] for e in model.entries} == {120.0, 150.0, 300.0}


def test_invalid_figures_are_not_compared(stored: str) -> None:
    data = comparison_of(stored)
    rows = [{**r, "valid": False} if r["runtime"] == "onnx" else r for r in data.rows]
    (model,) = compare_runtimes(rows, data.runs)
    assert {(e.runtime, e.variant) for e in model.entries} == {
        ("torch", "fp32"),
        ("openvino", "bf16"),
        ("infinity", "fp32"),
    }


def test_api_and_page(stored: str) -> None:
    with TestClient(authenticated_app(stored)) as client:
        (model,) = client.get("/api/runtimes", params={"run": DAG_RUN}).json()
        assert model["reference"] == "torch/fp32" and len(model["entries"]) == 4
        assert model["peer"] == "infinity/fp32"
        page = client.get("/runtimes")  # the latest multi-target run by default
        assert page.status_code == 200
        assert "Compare runtimes" in page.text and "scheduled__night-1" in page.text
        chosen = client.get("/runtimes", params={"run": DAG_RUN}).text
        assert '<td class="num better">300.0 <span class="muted">3.00x</span></td>' in chosen
        report = client.get("/report", params={"run": DAG_RUN}).text
        assert "<h2>Runtimes compared</h2>" in report and 'id="chart-runtimes"' in report
        assert "Against the peer server infinity/fp32 in this run" in report
        assert "openvino/bf16\nQPS c1 2.50x, QPS c4 2.50x" in report


@pytest.fixture(scope="module")
def page_url(stored: str) -> Iterator[str]:
    if browser.missing():
        pytest.skip(str(browser.missing()))
    with browser.live_server(browser.mounted(authenticated_app(stored))) as url:
        yield f"{url}/benchmarks/runtimes?run={DAG_RUN}"


def test_page_draws_the_ratio_chart_in_a_browser(page_url: str, tmp_path: Path) -> None:
    from tests.ui.conftest import ARTIFACTS

    driver = browser.make_driver()
    try:
        driver.get(page_url)
        browser.wait_for(driver, "document.querySelector('#chart-runtimes .main-svg') !== null")
        bars = driver.execute_script(
            "return document.getElementById('chart-runtimes').data"
            ".map(t => [t.name, t.x.length, t.y]);"
        )
        # QPS c1 and QPS c4 (the factory's heaviest closed scenario), one bar per target
        assert [b[0] for b in bars] == [f"{MODEL} QPS c1", f"{MODEL} QPS c4"]
        assert all(length == 4 for _, length, _ in bars)
        assert sorted(round(y, 2) for y in bars[0][2]) == [1.0, 1.2, 1.5, 3.0]
        # the peer's sentence under the table
        peer = driver.find_element("id", "peer-1").text
        assert peer.startswith("Against the peer server infinity/fp32 in this run")
        assert "openvino/bf16 QPS c1 2.50x, QPS c4 2.50x" in peer
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.full_page_screenshot(driver, ARTIFACTS / "compare-runtimes.png")
    finally:
        driver.quit()


def test_runtimes_are_compared_within_one_instance_type_at_a_time() -> None:
    def row(runtime: str, variant: str, qps: float, instance_type: str) -> dict[str, Any]:
        return {
            "model": MODEL,
            "runtime": runtime,
            "variant": variant,
            "mode": "closed",
            "concurrency": 1,
            "qps": qps,
            "valid": True,
            "instance_type": instance_type,
        }

    rows = [
        row("torch", "fp32", 100.0, "c7i.large"),
        row("onnx", "int8", 150.0, "c7i.large"),
        row("torch", "fp32", 80.0, "c7g.large"),
        row("onnx", "int8", 200.0, "c7g.large"),
    ]
    graviton, intel = compare_runtimes(rows, [])
    assert (graviton.title, intel.title) == (f"{MODEL} on c7g.large", f"{MODEL} on c7i.large")
    ratio = {c.instance_type: c.entries[1].relative["qps_c1"] for c in (graviton, intel)}
    assert ratio == {"c7g.large": pytest.approx(2.5), "c7i.large": pytest.approx(1.5)}
