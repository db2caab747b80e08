"""Browser tests in headless Chromium (Debian's chromium + chromium-driver, via selenium):
the history page and a run report render their Plotly charts with the expected points,
filters apply, a model named like a script stays text. Screenshots go to
test-artifacts/ui/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from embench.report import collect, write_report
from embench.store.db import make_engine, session_scope
from tests.ui import browser
from tests.ui.conftest import History, authenticated_app
from tests.ui.seed import MODEL, XSS_MODEL

pytestmark = pytest.mark.skipif(bool(browser.missing()), reason=str(browser.missing()))


@pytest.fixture(scope="module")
def base_url(history: History) -> Iterator[str]:
    with browser.live_server(browser.mounted(authenticated_app(history.url))) as url:
        yield f"{url}/benchmarks"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    chrome = browser.make_driver()
    try:
        yield chrome
    finally:
        chrome.quit()


def no_alert(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return True
    return False


def test_history_chart_points_markers_and_filter(
    driver: Any, base_url: str, history: History, artifacts: Path
) -> None:
    seeded = history.seeded
    query = {"model": MODEL, "variant": "fp32", "scenario": "closed-c4", "metric": "p99_ms"}
    driver.get(f"{base_url}/history?{urlencode(query)}")
    browser.wait_for(driver, "document.querySelector('#history-chart .main-svg') !== null")
    assert browser.series_points(driver, "history-chart") == seeded.nights
    regressions = driver.execute_script(
        "return document.getElementById('history-chart').data"
        ".filter(t => t.meta === 'regressed')[0].x.length;"
    )
    assert regressions == 1
    shapes = driver.execute_script(
        "return document.getElementById('history-chart').layout.shapes.length;"
    )
    assert shapes == 1  # the baseline change (library upgrade)
    assert driver.execute_script("return document.querySelectorAll('.scatterlayer .point').length;")
    browser.full_page_screenshot(driver, artifacts / "history-fp32-c4.png")

    # apply a filter through the form: int8 has no regression
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.set_window_size(1400, 1000)
    Select(driver.find_element(By.ID, "f-variant")).select_by_value("int8")
    driver.find_element(By.ID, "apply").click()
    browser.wait_for(
        driver,
        "location.search.includes('variant=int8') && "
        "document.querySelector('#history-chart .main-svg') !== null",
    )
    assert browser.series_points(driver, "history-chart") == seeded.nights
    regressions = driver.execute_script(
        "return document.getElementById('history-chart').data"
        ".filter(t => t.meta === 'regressed')[0].x.length;"
    )
    assert regressions == 0
    # every scenario of the variant: three series
    Select(driver.find_element(By.ID, "f-scenario")).select_by_value("")
    driver.find_element(By.ID, "apply").click()
    browser.wait_for(driver, "!location.search.includes('scenario=closed')")
    browser.wait_for(driver, "document.querySelector('#history-chart .main-svg') !== null")
    assert browser.series_points(driver, "history-chart") == 3 * seeded.nights
    browser.full_page_screenshot(driver, artifacts / "history-int8-all.png")


def test_runs_list_filters(driver: Any, base_url: str, history: History, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.set_window_size(1400, 1000)
    driver.get(f"{base_url}/")
    rows = driver.find_elements(By.CSS_SELECTOR, "#runs-table tr.run")
    assert len(rows) == 2 * history.seeded.nights + 1
    Select(driver.find_element(By.ID, "f-variant")).select_by_value("fp32")
    driver.execute_script(
        "document.getElementById('f-since').value = '2026-01-10';"
        "document.getElementById('f-until').value = '2026-01-12';"
    )
    driver.find_element(By.ID, "apply").click()
    browser.wait_for(driver, "location.search.includes('variant=fp32')")
    rows = driver.find_elements(By.CSS_SELECTOR, "#runs-table tr.run")
    assert len(rows) == 3
    assert {r.find_element(By.CSS_SELECTOR, ".variant").text for r in rows} == {"fp32"}
    browser.full_page_screenshot(driver, artifacts / "runs-filtered.png")


def test_report_file_renders_offline(
    driver: Any, history: History, artifacts: Path, tmp_path: Path
) -> None:
    engine = make_engine(history.url)
    with session_scope(engine) as session:
        data = collect(session, history.seeded.keys[history.seeded.last_dag_run], "Nightly")
    engine.dispose()
    _, html_path = write_report(tmp_path, data)
    driver.set_window_size(1400, 1000)
    driver.get(html_path.as_uri())  # from disk: Plotly inlined, nothing fetched
    browser.wait_for(driver, "document.querySelector('#chart-qps .main-svg') !== null")
    # two runs x three concurrencies; latency shows p50 and p99
    assert browser.series_points(driver, "chart-qps") == 2 * 3
    assert browser.series_points(driver, "chart-latency") == 2 * 2 * 3
    regressed = driver.execute_script("return document.querySelectorAll('td.regressed').length;")
    # every regressed figure of the data is marked in its cell (the seed's fp32 p99)
    marked = [m for row in data.rows for m in row["verdicts"].values() if m == "regressed"]
    assert regressed == len(marked) >= 1
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);"
    )
    assert [r for r in resources if not r.startswith("file:")] == []
    browser.full_page_screenshot(driver, artifacts / "run-report.png")


def test_a_script_in_a_model_name_stays_text(
    driver: Any, base_url: str, history: History, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver.set_window_size(1400, 1000)
    driver.get(f"{base_url}/")
    assert no_alert(driver)
    cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#runs-table td.model")]
    assert XSS_MODEL in cells
    driver.get(f"{base_url}/history?model={quote(XSS_MODEL)}")
    browser.wait_for(driver, "document.querySelector('#history-chart .main-svg') !== null")
    assert no_alert(driver)
    assert driver.find_element(By.ID, "h-model").text == XSS_MODEL
    legend = driver.execute_script(
        "return Array.from(document.querySelectorAll('#history-chart .legendtext'))"
        ".map(e => e.textContent);"
    )
    assert any(text.startswith("fp32/") for text in legend)
    driver.get(f"{base_url}/report?run={quote(history.seeded.xss_dag_run)}")
    browser.wait_for(driver, "document.querySelector('#chart-qps .main-svg') !== null")
    assert no_alert(driver)
    headings = [h.text for h in driver.find_elements(By.TAG_NAME, "h2")]
    assert XSS_MODEL in headings
    legend = driver.execute_script(
        "return Array.from(document.querySelectorAll('#chart-qps .legendtext'))"
        ".map(e => e.textContent);"
    )
    assert legend == [f"{XSS_MODEL}/fp32/onnxruntime"]
    assert driver.execute_script(
        "return document.querySelectorAll('img, script:not([src])').length"
    )
    browser.full_page_screenshot(driver, artifacts / "xss-report.png")
