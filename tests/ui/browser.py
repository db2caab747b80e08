"""Headless Chromium (Debian's chromium + chromium-driver, driven by selenium) and a live
server for the Benchmarks app: shared by the browser tests and bench/ui_screenshots.py."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1400,1000",
)
CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = ("chromedriver", "chromium-driver")


def find(names: tuple[str, ...]) -> str | None:
    for name in names:
        if path := shutil.which(name):
            return path
    return None


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    if find(CHROMIUM) is None or find(CHROMEDRIVER) is None:
        return "Chromium not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed"
    return None


def make_driver(width: int = 1400, height: int = 1000) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(find(CHROMIUM))
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(find(CHROMEDRIVER))))
    driver.set_window_size(width, height)
    driver.set_page_load_timeout(60)
    return driver


def mounted(app: FastAPI, prefix: str = "/benchmarks") -> FastAPI:
    """The app mounted under `prefix`, as Airflow's api-server mounts plugin apps."""
    root = FastAPI()
    root.mount(prefix, app)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` on a free local port in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_for(driver: Any, script: str, timeout_s: float = 30.0) -> Any:
    """Poll `script` (a JS expression) until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for: {script}")
        time.sleep(0.1)


# Points drawn by the data series of a Plotly graph div (nulls break lines, not points).
SERIES_POINTS_JS = """
(function (id) {
  var el = document.getElementById(id);
  if (!el || !el.data) return null;
  var n = 0;
  el.data.forEach(function (t) {
    if (t.meta === "series") t.y.forEach(function (v) { if (v !== null) n += 1; });
  });
  return n;
})(arguments[0])
"""


def series_points(driver: Any, div_id: str) -> int | None:
    return driver.execute_script(f"return {SERIES_POINTS_JS.strip()};", div_id)


def full_page_screenshot(driver: Any, path: Any, width: int = 1400) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(width, min(int(height) + 40, 6000))
    time.sleep(0.3)  # let Plotly's responsive resize settle
    driver.save_screenshot(str(path))
