"""Issue 17's smaller UI items: the OpenAPI document behind the same login as every route,
malformed numbers (superscripts, other scripts' digits, signs, huge values) refused with a
4xx naming the parameter, and row limits on the history listings (API, pages, CLI) that
say when rows were left off."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient

from embench.cli import main as embench_main
from embench.store.limits import (
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
    RUNS_LIMIT_DEFAULT,
    RUNS_LIMIT_MAX,
)
from embench.ui.app import create_app
from embench.ui.auth import require_user
from embench.ui.db import read_only_engine
from tests.ui.conftest import History
from tests.ui.seed import MODEL

HUGE = "9" * 30  # past any 64-bit integer
# Digits str.isdigit() accepts: a superscript (int() refuses it) and an Arabic-Indic three
# (int() accepts it). Neither is a number here: a limit or run number is ASCII digits only.
NOT_ASCII = ["²", "٣", "\uff13"]  # the last: a fullwidth three


# -- the OpenAPI document needs a login -----------------------------------------------------


def _bearer_only(request: Request) -> dict[str, Any]:
    """Stands in for Airflow's get_user: 401 without a bearer token, as it answers."""
    if request.headers.get("authorization") != "Bearer good":
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    return {"username": "test"}


@pytest.fixture(scope="module")
def guarded(history: History) -> TestClient:
    app = create_app(read_only_engine(history.url))
    app.dependency_overrides[require_user] = _bearer_only
    return TestClient(app)


def test_openapi_document_needs_the_same_login_as_the_api(guarded: TestClient) -> None:
    refused = guarded.get("/api/runs")
    assert refused.status_code == 401
    anonymous = guarded.get("/api/openapi.json")
    assert anonymous.status_code == refused.status_code
    assert anonymous.json() == refused.json()  # no schema in the refusal
    good = {"Authorization": "Bearer good"}
    schema = guarded.get("/api/openapi.json", headers=good)
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/runs", "/api/history", "/api/report"} <= set(paths)
    assert "/api/openapi.json" not in paths
    limit = next(p for p in paths["/api/history"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == HISTORY_LIMIT_MAX
    assert limit["schema"]["default"] == HISTORY_LIMIT_DEFAULT
    # no Swagger UI or ReDoc pages, with or without a login
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert guarded.get(path, headers=good).status_code == 404
        assert guarded.get(path).status_code in (401, 404)


def test_openapi_document_names_the_mount_point(history: History) -> None:
    app = create_app(read_only_engine(history.url))
    app.dependency_overrides[require_user] = lambda: {"username": "test"}
    mounted = TestClient(app, root_path="/benchmarks")
    schema = mounted.get("/api/openapi.json").json()
    assert schema["servers"][0] == {"url": "/benchmarks"}


# -- numbers in query parameters ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/runs", "/api/history", "/", "/history"])
@pytest.mark.parametrize("value", [*NOT_ASCII, "-1", "0", HUGE, "1.5", "", "ten"])
def test_a_bad_limit_is_a_422_naming_it(client: TestClient, path: str, value: str) -> None:
    response = client.get(path, params={"model": MODEL, "limit": value})
    assert response.status_code == 422, response.text
    assert "limit" in response.json()["detail"]


RUN_ROUTES = [
    ("/api/report", "run"),
    ("/report", "run"),
    ("/api/runtimes", "run"),
    ("/runtimes", "run"),
    ("/api/compare", "a"),
    ("/api/compare", "b"),
    ("/compare", "a"),
    ("/compare", "b"),
]


@pytest.mark.parametrize(("path", "name"), RUN_ROUTES)
@pytest.mark.parametrize("value", [*NOT_ASCII, "-1", "-0", HUGE, str(2**63), "+1", " 1"])
def test_a_run_that_is_no_run_number_is_a_404_naming_the_parameter(
    client: TestClient, history: History, path: str, name: str, value: str
) -> None:
    """A superscript was a 500 (str.isdigit() let it through to int()), a huge number too
    (SQLite's integers end at 2**63-1)."""
    other = history.seeded.keys[history.seeded.last_dag_run][0]
    params = {"a": other, "b": other, name: value} if name in "ab" else {name: value}
    response = client.get(path, params=params)
    assert response.status_code == 404, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{name}: no stored run")
    assert "run number" in detail  # what was expected


def test_run_numbers_are_ascii_digits(client: TestClient) -> None:
    """Run 3 is found as "3" or "003"; the Arabic-Indic three, which int() would read as 3,
    is an unknown name like any other (consistent with the limits, which FastAPI parses as
    ASCII digits only)."""
    assert client.get("/api/report", params={"run": "3"}).status_code == 200
    assert client.get("/api/report", params={"run": "003"}).status_code == 200
    assert client.get("/api/report", params={"run": "٣"}).status_code == 404
    assert client.get("/api/report", params={"run": "³"}).status_code == 404


@pytest.mark.parametrize("path", ["/api/runs", "/api/history", "/", "/history"])
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("until", "9999-12-31"),  # the day after is past datetime's range
        ("since", "0001-01-01T00:00:00+05:00"),  # before year 1 in UTC
        ("since", "²⁰²⁶-01-01"),
        ("until", "\u0662\u0660\u0662\u0666-\u0660\u0661-\u0660\u0661"),  # Arabic-Indic
        ("since", "2026-13-01"),
    ],
)
def test_a_bad_date_is_a_400_naming_it(client: TestClient, path: str, name: str, value: str):
    response = client.get(path, params={"model": MODEL, name: value})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{name}: expected an ISO date")


# -- row limits ------------------------------------------------------------------------------


def test_runs_api_limit_default_maximum_and_truncation(
    client: TestClient, history: History
) -> None:
    total = 2 * history.seeded.nights + 1
    everything = client.get("/api/runs", params={"limit": RUNS_LIMIT_MAX})
    assert len(everything.json()) == total
    assert everything.headers["X-Embench-Truncated"] == "false"
    assert everything.headers["X-Embench-Limit"] == str(RUNS_LIMIT_MAX)
    assert client.get("/api/runs").headers["X-Embench-Limit"] == str(RUNS_LIMIT_DEFAULT)
    newest = client.get("/api/runs", params={"limit": 3})
    assert newest.headers["X-Embench-Truncated"] == "true"
    assert newest.json() == everything.json()[:3]  # newest first
    exact = client.get("/api/runs", params={"limit": total})
    assert exact.headers["X-Embench-Truncated"] == "false" and len(exact.json()) == total
    above = client.get("/api/runs", params={"limit": RUNS_LIMIT_MAX + 1})
    assert above.status_code == 422
    assert (
        f"limit: Input should be less than or equal to {RUNS_LIMIT_MAX}" in (above.json()["detail"])
    )


def test_history_api_limit_keeps_the_newest_points_and_says_so(
    client: TestClient, history: History
) -> None:
    params = {"model": MODEL, "variant": "fp32", "scenario": "closed-c4"}
    full = client.get("/api/history", params=params)
    body = full.json()
    assert body["limit"] == HISTORY_LIMIT_DEFAULT and body["truncated"] is False
    assert full.headers["X-Embench-Truncated"] == "false"
    assert len(body["points"]) == history.seeded.nights
    cut = client.get("/api/history", params={**params, "limit": 4})
    assert cut.headers["X-Embench-Truncated"] == "true"
    part = cut.json()
    assert part["truncated"] is True and part["limit"] == 4
    assert part["points"] == body["points"][-4:]  # the newest four, oldest first
    assert sum(len(s["points"]) for s in part["series"]) == 4
    exact = client.get("/api/history", params={**params, "limit": history.seeded.nights})
    assert exact.json()["truncated"] is False
    above = client.get("/api/history", params={**params, "limit": HISTORY_LIMIT_MAX + 1})
    assert above.status_code == 422
    assert str(HISTORY_LIMIT_MAX) in above.json()["detail"]


def test_pages_say_when_rows_were_left_off(client: TestClient) -> None:
    runs = client.get("/", params={"limit": 2})
    assert runs.status_code == 200 and runs.headers["X-Embench-Truncated"] == "true"
    assert "2 run(s) (the newest 2; older runs were left off)" in runs.text
    assert "left off" not in client.get("/").text
    history = client.get("/history", params={"model": MODEL, "limit": 5})
    assert history.status_code == 200 and history.headers["X-Embench-Truncated"] == "true"
    assert 'id="truncated"' in history.text and ">5</span> point(s)" in history.text
    whole = client.get("/history", params={"model": MODEL})
    assert whole.headers["X-Embench-Truncated"] == "false" and 'id="truncated"' not in whole.text


def test_cli_history_and_runs_share_the_limits(
    history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--db-url", history.url, "--json"]
    query = ["history", "--model", MODEL, "--variant", "fp32", "--scenario", "closed-c4"]
    assert embench_main([*query, *base]) == 0
    out = capsys.readouterr()
    everything = json.loads(out.out)
    assert len(everything) == history.seeded.nights and "left off" not in out.err
    assert embench_main([*query, *base, "--limit", "3"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == everything[-3:]
    assert "newest 3 points shown; older ones were left off" in out.err
    assert embench_main(["runs", *base, "--limit", "2"]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)) == 2 and "newest 2 runs shown" in out.err
    for command, maximum in ((query, HISTORY_LIMIT_MAX), (["runs"], RUNS_LIMIT_MAX)):
        for bad in ("²", "٣", "-1", "0", str(maximum + 1), HUGE):
            with pytest.raises(SystemExit) as exit_:
                embench_main([*command, *base, "--limit", bad])
            assert exit_.value.code == 2
            err = capsys.readouterr().err
            assert f"--limit: expected a whole number from 1 to {maximum}" in err, err
