"""Regenerate the committed screenshots of the Benchmarks UI (docs/screenshots/): seed a
throwaway history (tests/ui/seed.py), serve the app as Airflow mounts it, and photograph the
history page and a run report in headless Chromium.

    .venv/bin/python bench/ui_screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from embench.report import collect, write_report  # noqa: E402
from embench.store.db import make_engine, session_scope, upgrade_to_head  # noqa: E402
from tests.ui import browser  # noqa: E402
from tests.ui.conftest import authenticated_app  # noqa: E402
from tests.ui.seed import MODEL, seed_history  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args(argv)
    if reason := browser.missing():
        print(f"ui_screenshots: {reason}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'results.db'}"
        engine = make_engine(url)
        upgrade_to_head(engine)
        seeded = seed_history(engine, nights=30)
        with session_scope(engine) as session:
            data = collect(
                session,
                seeded.keys[seeded.last_dag_run],
                f"Embedding benchmark embedding_benchmark / {seeded.last_dag_run}",
            )
        engine.dispose()
        _, report_path = write_report(Path(tmp), data)
        driver = browser.make_driver()
        try:
            with browser.live_server(browser.mounted(authenticated_app(url))) as base:
                query = {"model": MODEL, "variant": "fp32", "scenario": "closed-c4"}
                driver.get(f"{base}/benchmarks/history?{urlencode(query)}")
                browser.wait_for(driver, "document.querySelector('#history-chart .main-svg')")
                browser.full_page_screenshot(driver, args.out / "history.png")
                driver.set_window_size(1400, 1000)
                driver.get(f"{base}/benchmarks/")
                driver.save_screenshot(str(args.out / "runs.png"))
            driver.set_window_size(1400, 1000)
            driver.get(report_path.as_uri())
            browser.wait_for(driver, "document.querySelector('#chart-qps .main-svg')")
            browser.full_page_screenshot(driver, args.out / "run-report.png")
        finally:
            driver.quit()
    for name in ("history.png", "runs.png", "run-report.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
