"""Cost per million embeddings, from results seeded into a real store: the run report ranks
each configuration by it (Markdown and HTML), the JSON API carries it on every priced row, the
"Compare runtimes" page shows the ranking (also in Chromium) and the compare page puts two
runs' costs side by side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from embench.cost import PRICE_LABEL, PRICE_SOURCE_LABEL, HostPrice, price_labels
from embench.report import markdown
from embench.store.db import make_engine, upgrade_to_head
from embench.store.ingest import ingest_result
from tests.store.factory import MODEL, run_result
from tests.ui import browser
from tests.ui.conftest import authenticated_app, report_data

DAG_RUN = "scheduled__night-0"
SOURCE = "prices.yaml: https://example.org/prices (as of 2026-07-21)"
# (runtime, variant) -> texts/s (the factory's texts/s is its QPS), instance type, $/hour
TARGETS: dict[tuple[str, str], tuple[float, str | None, float | None]] = {
    ("torch", "fp32"): (100.0, "c7g.large", 0.0725),
    ("onnx", "int8"): (150.0, "c7i.large", 0.0893),
    ("openvino", "bf16"): (300.0, "c7i.4xlarge", 0.714),
    ("infinity", "fp32"): (120.0, None, None),  # a static host with no price
}
# $ per million embeddings = $/hour / (texts/s x 3600) x 1e6, worked out by hand
EXPECTED = {
    ("onnx", "int8"): 0.0893 / 540_000 * 1e6,  # 0.16537...
    ("torch", "fp32"): 0.0725 / 360_000 * 1e6,  # 0.20138...
    ("openvino", "bf16"): 0.714 / 1_080_000 * 1e6,  # 0.66111...
}


def _labels(instance_type: str | None, usd: float | None) -> dict[str, str]:
    price = HostPrice(usd, SOURCE) if usd is not None else None
    host = f"i-{instance_type}" if instance_type else "bench-9"
    return {"host": host, **price_labels(price, instance_type)}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cost') / 'results.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    for index, ((runtime, variant), (qps, instance_type, usd)) in enumerate(TARGETS.items()):
        result = run_result(
            runtime=runtime,
            variant=variant,
            qps=qps,
            repetition=index,
            labels=_labels(instance_type, usd),
        )
        ingest_result(engine, result)
    engine.dispose()
    return url


def report_of(url: str) -> Any:
    return report_data(url, DAG_RUN)


def test_each_priced_row_carries_its_cost(stored: str) -> None:
    data = report_of(stored)
    for row in data.rows:
        target = (row["runtime"], row["variant"])
        if target in EXPECTED:
            assert row["usd_per_million"] == pytest.approx(EXPECTED[target], rel=1e-9)
            assert row[PRICE_SOURCE_LABEL] == SOURCE
        else:
            assert row["usd_per_million"] is None and row[PRICE_LABEL] is None
    # the benchmark's own cost: price x the run's wall time (the factory's runs last 5 min)
    runs = {(r["runtime"], r["variant"]): r for r in data.runs}
    assert runs[("openvino", "bf16")]["wall_s"] == 300.0
    assert runs[("openvino", "bf16")]["run_usd"] == pytest.approx(0.714 * 300 / 3600)
    assert runs[("infinity", "fp32")]["run_usd"] is None


def test_the_report_ranks_configurations_by_cost_per_million(stored: str) -> None:
    data = report_of(stored)
    assert [(r.model, r.scenario) for r in data.cost] == [
        (MODEL, "closed-c1"),
        (MODEL, "closed-c4"),
    ]
    for ranking in data.cost:
        # the cheapest per embedding first: not the fastest (openvino), not the cheapest host
        assert [(e.runtime, e.variant) for e in ranking.ranked] == [
            ("onnx", "int8"),
            ("torch", "fp32"),
            ("openvino", "bf16"),
        ]
        for entry in ranking.ranked:
            expected = EXPECTED[(entry.runtime, entry.variant)]
            assert entry.usd_per_million == pytest.approx(expected, rel=1e-9)
        (unpriced,) = ranking.unpriced
        assert (unpriced.runtime, unpriced.usd_per_hour, unpriced.usd_per_million) == (
            "infinity",
            None,
            None,
        )
        assert unpriced.how_to_price == "set benchmark.yaml cost.usd_per_hour[bench-9]"
        assert ranking.best == "onnx/int8 on c7i.large"
    text = markdown(data)
    section = text[text.index("## Cost per million embeddings") :]
    assert f"### {MODEL} closed-c1" in section
    table = section[section.index(f"### {MODEL} closed-c1") :].split("\n\n")[1].splitlines()
    assert table == [
        "| rank | configuration | texts/s | $/hour | $/M embeddings | price source |",
        "|---|---|---|---|---|---|",
        f"| 1 | onnx/int8 on c7i.large | 150.0 | 0.0893 | 0.1654 | {SOURCE} |",
        f"| 2 | torch/fp32 on c7g.large | 100.0 | 0.0725 | 0.2014 | {SOURCE} |",
        f"| 3 | openvino/bf16 on c7i.4xlarge | 300.0 | 0.714 | 0.6611 | {SOURCE} |",
        "| - | infinity/fp32 on bench-9 | 120.0 | no price | - | "
        "set benchmark.yaml cost.usd_per_hour[bench-9] |",
    ]
    # what the benchmark itself cost: three priced runs of 300 s each
    assert "| all-minilm-l6-v2/bf16/openvino | 0.714 | 300.0 | 0.0595 |" in section
    total = (0.0725 + 0.0893 + 0.714) * 300 / 3600
    assert f"Total: ${total:.4g} for 3 priced run(s)" in section


def test_an_unpriced_run_says_how_to_price_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    ingest_result(engine, run_result(repetition=0))  # no labels: this machine, no price
    engine.dispose()
    data = report_of(url)
    text = markdown(data)
    assert (
        "No price: none of these results' hosts has a price per hour, so no cost is computed "
        "(set benchmark.yaml cost.usd_per_hour[local])."
    ) in text


def test_report_page_runtimes_page_api_and_compare_page(stored: str) -> None:
    with TestClient(authenticated_app(stored)) as client:
        report = client.get("/api/report", params={"run": DAG_RUN}).json()
        (first, *_) = report["cost"]
        assert [e["runtime"] for e in first["ranked"]] == ["onnx", "torch", "openvino"]
        page = client.get("/report", params={"run": DAG_RUN}).text
        assert "<h2>Cost per million embeddings</h2>" in page
        assert '<tr class="best">' in page and "onnx/int8 on c7i.large" in page
        assert '<td class="num">0.1654</td>' in page and "no price" in page
        assert 'id="run-costs"' in page
        runtimes = client.get("/runtimes", params={"run": DAG_RUN}).text
        assert "<h2>Cost per million embeddings</h2>" in runtimes and 'id="cost-1"' in runtimes
        # runtimes are compared side by side on one instance type only: each of these ran
        # on its own, so the cost ranking is where they meet
        types = sorted(str(c["instance_type"]) for c in report["comparison"])
        assert types == ["None", "c7g.large", "c7i.4xlarge", "c7i.large"]
        assert "no runtimes to compare side by side" in runtimes
        keys = {r["runtime"]: r["ingest_key"] for r in report["runs"]}
        compared = client.get("/api/compare", params={"a": keys["torch"], "b": keys["onnx"]})
        scenario = compared.json()["scenarios"][0]
        (cost,) = [m for m in scenario["metrics"] if m["metric"] == "usd_per_million"]
        assert cost["a"] == pytest.approx(EXPECTED[("torch", "fp32")], rel=1e-9)
        assert cost["b"] == pytest.approx(EXPECTED[("onnx", "int8")], rel=1e-9)
        assert compared.json()["b"][PRICE_LABEL] == 0.0893
        html = client.get("/compare", params={"a": keys["torch"], "b": keys["onnx"]}).text
        assert "<td>usd_per_million</td>" in html and "$0.0893 (c7i.large)" in html


@pytest.fixture(scope="module")
def page_url(stored: str) -> Iterator[str]:
    if browser.missing():
        pytest.skip(str(browser.missing()))
    with browser.live_server(browser.mounted(authenticated_app(stored))) as url:
        yield f"{url}/benchmarks/runtimes?run={DAG_RUN}"


def test_the_cost_ranking_renders_in_a_browser(page_url: str) -> None:
    from tests.ui.conftest import ARTIFACTS

    driver = browser.make_driver()
    try:
        driver.get(page_url)
        browser.wait_for(driver, "document.getElementById('cost-1') !== null")
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('#cost-1 tr')).slice(1)"
            ".map(tr => Array.from(tr.cells).map(td => td.innerText.trim()));"
        )
        assert [r[:5] for r in rows] == [
            ["1", "onnx/int8 on c7i.large", "150.0", "0.0893", "0.1654"],
            ["2", "torch/fp32 on c7g.large", "100.0", "0.0725", "0.2014"],
            ["3", "openvino/bf16 on c7i.4xlarge", "300.0", "0.714", "0.6611"],
            ["-", "infinity/fp32 on bench-9", "120.0", "no price", "-"],
        ]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.full_page_screenshot(driver, ARTIFACTS / "cost-ranking.png")
    finally:
        driver.quit()
