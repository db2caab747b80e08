"""The server against its own OpenAPI document: schemathesis with all of its checks (status codes,
content types, response schemas and headers, schema-valid requests accepted and invalid ones
refused, unsupported methods) finds no failure.

The server is the real app under uvicorn, over a socket, with the fake runtime (fast, and its
vectors are real enough for the response schemas). schemathesis runs as its CLI, in its
deterministic mode (no random seed, no example database) with a bounded number of examples, so
that a run is repeatable and takes seconds; its summary line is printed (pytest -s shows it)
and the end of its report is the failure message."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from server.app import create_app
from server.http_protocol import protocol_class
from tests.server.conftest import FAKE_DIM, FakeEmbedder, fake_loader, fake_settings

MAX_EXAMPLES = 100  # per operation and phase
SUMMARY = re.compile(r"^=+ .* in [\d.]+s =+$")


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    """The app under uvicorn on a free port of 127.0.0.1, ready; stopped afterwards."""
    settings = fake_settings(tmp_path, max_texts_per_request=8)
    app = create_app(settings, loader=fake_loader(FakeEmbedder()))
    config = uvicorn.Config(
        app,
        http=protocol_class(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        lifespan="on",
        log_level="warning",
        server_header=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready in 30 s"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_the_document_states_the_limits(server_url: str) -> None:
    document = httpx.get(server_url + "/openapi.json").json()
    embed = document["paths"]["/embed"]["post"]
    texts = embed["requestBody"]["content"]["application/json"]["schema"]["properties"]["texts"]
    assert {"type": "string", "minLength": 1} in texts["anyOf"]
    array = next(branch for branch in texts["anyOf"] if branch["type"] == "array")
    assert (array["minItems"], array["maxItems"]) == (1, 8)
    assert embed["requestBody"]["x-max-body-bytes"] == 64 * 1024
    assert set(embed["responses"]) == {
        "200", "400", "408", "413", "415", "422", "429", "500", "503"
    }  # fmt: skip
    openai = document["paths"]["/v1/embeddings"]["post"]
    dimensions = openai["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "dimensions"
    ]
    assert {"type": "integer", "const": FAKE_DIM} in dimensions["anyOf"]
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == [httpx.get(server_url + "/metrics").headers["content-type"]]


def test_schemathesis_finds_no_failure(server_url: str, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", server_url + "/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers", "1",
        "--request-timeout", "10",
        "--no-color",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    lines = [line.strip() for line in output.splitlines()]
    summary = [line for line in lines if SUMMARY.match(line)]
    cases = [line for line in lines if re.match(r"^\d+ generated", line)]
    print("schemathesis:", summary[-1] if summary else "(no summary line)")
    print("schemathesis test cases:", cases[-1] if cases else "(none reported)")
    assert result.returncode == 0, output[-12000:]
    assert summary, output[-3000:]
    assert "failed" not in summary[-1] and "error" not in summary[-1], output[-12000:]
