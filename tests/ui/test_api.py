"""The Benchmarks app's JSON API and pages on a seeded history (authentication stubbed;
see test_auth.py for the real thing), read-only database access, XSS escaping, and the
per-run report (Markdown and HTML, `embench report`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from embench.cli import main as embench_main
from embench.report import collect, markdown
from embench.store.db import make_engine, session_scope, upgrade_to_head
from embench.store.models import Run
from embench.ui.db import read_only_engine, read_session
from tests.ui.conftest import History, authenticated_app
from tests.ui.seed import MODEL, XSS_MODEL, seed_history

FP32_C4 = {"model": MODEL, "variant": "fp32", "scenario": "closed-c4", "metric": "p99_ms"}


def test_runs_list_and_filters(client: TestClient, history: History) -> None:
    nights = history.seeded.nights
    runs = client.get("/api/runs", params={"limit": 1000}).json()
    assert len(runs) == 2 * nights + 1
    assert runs[0]["model"] == XSS_MODEL  # newest first
    int8 = client.get("/api/runs", params={"model": MODEL, "variant": "int8"}).json()
    assert len(int8) == nights and {r["variant"] for r in int8} == {"int8"}
    window = client.get("/api/runs", params={"since": "2026-01-03", "until": "2026-01-04"}).json()
    assert sorted(r["started_at"][:10] for r in window) == ["2026-01-03"] * 2 + ["2026-01-04"] * 2
    assert client.get("/api/runs", params={"status": "failed"}).json() == []
    regressed = [r for r in runs if r["regressions"]]
    assert [r["variant"] for r in regressed] == ["fp32"]
    assert regressed[0]["dag_run_id"] == history.seeded.last_dag_run
    assert client.get("/api/runs", params={"status": "bogus"}).status_code == 400
    assert client.get("/api/runs", params={"since": "yesterday"}).status_code == 400


def test_history_has_every_night_the_regression_and_the_baseline_change(
    client: TestClient, history: History
) -> None:
    seeded = history.seeded
    body = client.get("/api/history", params=FP32_C4).json()
    points = body["points"]
    assert len(points) == seeded.nights
    assert [p["verdict"] for p in points][-1] == "regressed"
    assert sum(p["verdict"] == "regressed" for p in points) == 1
    [change] = body["baseline_changes"]
    assert change["time"].startswith(f"2026-01-{seeded.upgrade_night + 1:02d}")
    assert len(body["series"]) == 1
    everything = client.get("/api/history", params={"model": MODEL}).json()
    assert len(everything["series"]) == 2 * 3  # variants x scenarios
    bad = client.get("/api/history", params={**FP32_C4, "metric": "1; DROP TABLE runs"})
    assert bad.status_code == 400 and "unknown metric" in bad.json()["detail"]


def test_compare_two_runs(client: TestClient, history: History) -> None:
    keys = history.seeded.keys
    a = keys[history.seeded.last_dag_run.replace("14T", "13T")][0]
    b = keys[history.seeded.last_dag_run][0]
    body = client.get("/api/compare", params={"a": a, "b": b}).json()
    assert body["a"]["ingest_key"] == a and body["b"]["ingest_key"] == b
    c4 = next(s for s in body["scenarios"] if s["scenario"] == "closed-c4")
    p99 = next(m for m in c4["metrics"] if m["metric"] == "p99_ms")
    assert c4["comparable"] and p99["relative"] > 0.3
    page = client.get("/compare", params={"a": a, "b": b})
    assert page.status_code == 200 and 'class="regressed"' in page.text
    missing = client.get("/api/compare", params={"a": a, "b": "no-such-run"})
    assert missing.status_code == 404


def test_report_json_and_page(client: TestClient, history: History) -> None:
    run = history.seeded.last_dag_run
    body = client.get("/api/report", params={"run": run}).json()
    assert len(body["runs"]) == 2 and len(body["rows"]) == 6
    assert {s["name"] for s in body["series"]} == {
        f"{MODEL}/fp32/onnxruntime",
        f"{MODEL}/int8/onnxruntime",
    }
    assert [s["concurrency"] for s in body["series"]] == [[1, 4, 16]] * 2
    assert any(w["code"] == "client_saturated" for w in body["warnings"])
    page = client.get("/report", params={"run": run})
    assert page.status_code == 200
    assert "/static/plotly.min.js" in page.text and "REGRESSED" in page.text


def test_pages_render(client: TestClient, history: History) -> None:
    for path in ("/", "/history", "/compare", f"/history?model={quote(MODEL)}&variant=int8"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'self'" in response.headers["content-security-policy"]
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and "plotly.js (basic - minified) v" in js.text[:200]


def test_every_value_is_escaped(client: TestClient, history: History) -> None:
    """A model named like a script is shown as text: escaped in HTML, \\u003c in JSON blocks."""
    pages = [
        client.get("/").text,
        client.get("/history", params={"model": XSS_MODEL}).text,
        client.get("/report", params={"run": history.seeded.xss_dag_run}).text,
        client.get(
            "/compare", params={"b": history.seeded.keys[history.seeded.xss_dag_run][0]}
        ).text,
    ]
    for text in pages:
        assert XSS_MODEL not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # reflected query parameters too
    probe = '"><img src=x onerror=alert(2)>'
    text = client.get("/history", params={"model": probe}).text
    assert probe not in text and "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in text
    error = client.get("/", params={"since": probe}, headers={"accept": "text/html"})
    assert error.status_code == 400 and probe not in error.text
    api = client.get("/api/runs", params={"since": probe})  # JSON, never HTML
    assert api.headers["content-type"] == "application/json"


def test_markdown_escapes_and_report_files(tmp_path: Path, history: History) -> None:
    out = tmp_path / "report"
    status = embench_main(
        ["report", history.seeded.xss_dag_run, "--db-url", history.url, "--out-dir", str(out)]
    )
    assert status == 0
    text = (out / "report.md").read_text()
    assert "&lt;script>alert(1)&lt;/script>" in text and "<script>" not in text
    html = (out / "report.html").read_text()
    assert XSS_MODEL not in html
    # self-contained: Plotly inlined, nothing fetched from elsewhere
    assert "plotly.js (basic - minified) v" in html and not re.search(r"<script[^>]+src=", html)
    assert "cdn" not in re.findall(r"<(?:script|link)[^>]*>", html).__repr__().lower()
    assert len(html.encode()) < 1_500_000  # Plotly's basic bundle, once (the full one: 4.8 MB)


def test_report_of_a_dag_run_by_cli(tmp_path: Path, history: History) -> None:
    run = history.seeded.last_dag_run
    out = tmp_path / "r"
    args = ["report", f"embedding_benchmark/{run}", "--db-url", history.url]
    assert embench_main([*args, "--out-dir", str(out), "--json"]) == 0
    md = (out / "report.md").read_text()
    assert "**REGRESSED** all-minilm-l6-v2/fp32/onnxruntime closed-c4 p99_ms" in md
    assert "| p99.9 ms |" in md and "not stored" in md  # cold start absent
    assert "client_saturated" in md and "hardware key" in md
    assert embench_main(["report", "no-such-run", "--db-url", history.url]) == 1


def test_markdown_keeps_the_seed_table(history: History) -> None:
    engine = make_engine(history.url)
    with session_scope(engine) as session:
        data = collect(session, history.seeded.keys[history.seeded.last_dag_run], "t")
    text = markdown(data)
    assert text.startswith("# t") and "| fp32 | onnxruntime | closed-c1 |" in text
    assert text.index("| fp32 | onnxruntime | closed-c1 |") < text.index("## Environment")
    engine.dispose()


def test_sqlite_sessions_are_read_only(history: History) -> None:
    engine = read_only_engine(history.url)
    with read_session(engine) as session:
        assert session.scalar(sa.select(sa.func.count(Run.id))) > 0
        with pytest.raises(sa.exc.OperationalError, match="readonly"):
            session.execute(sa.delete(Run))
    engine.dispose()


def test_postgresql_sessions_are_read_only(pg_database: Callable[[], str]) -> None:
    url = pg_database()
    writer = make_engine(url)
    upgrade_to_head(writer)
    seed_history(writer, nights=2)
    writer.dispose()
    engine = read_only_engine(url)
    with read_session(engine) as session:
        assert session.scalar(sa.select(sa.func.count(Run.id))) == 5
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            session.execute(sa.delete(Run))
    app_client = TestClient(authenticated_app(url))
    runs = app_client.get("/api/runs").json()
    assert len(runs) == 5 and json.dumps(runs)
    engine.dispose()


def test_pipeline_report_task_writes_markdown_and_html(
    tmp_path: Path, history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embench.config import load_config
    from embench.steps import RunContext, report

    monkeypatch.setenv("EMBENCH_DB_URL", history.url)
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path))
    ctx = RunContext("embedding_benchmark", history.seeded.last_dag_run)
    path = Path(report(ctx, {"models": ["all-minilm-l6-v2"]}, load_config()))
    assert path.name == "report.md" and path.parent == ctx.run_dir()
    assert "**REGRESSED**" in path.read_text()
    html = path.with_name("report.html").read_text()
    assert "Latency vs concurrency" in html and "plotly.js (basic - minified) v" in html
