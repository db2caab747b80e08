"""The plugin inside Airflow's real api-server: plugins/benchmarks_plugin.py is loaded from
the plugins folder, its app is mounted under /benchmarks, the "Benchmarks" entry is listed,
and every page and API route needs an Airflow login (JWT from the Authorization header or
the `_token` cookie the Airflow UI sets). Runs in a subprocess: Airflow reads its config
once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.ui.conftest import History

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import json
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app, get_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.models.revoked_token import RevokedToken

# Token revocation lives in Airflow's metadata database, which this probe does not create.
RevokedToken.is_revoked = classmethod(lambda cls, jti, session=None: False)
app = create_app(apps="core")
token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
bearer = {"Authorization": f"Bearer {token}"}
anonymous = TestClient(app)
out = {
    "api_anonymous": anonymous.get("/benchmarks/api/runs").status_code,
    "report_anonymous": anonymous.get("/benchmarks/api/report?run=x").status_code,
    "plotly_anonymous": anonymous.get("/benchmarks/static/plotly.min.js").status_code,
    "openapi_anonymous": anonymous.get("/benchmarks/api/openapi.json").status_code,
    "api_bad_token": anonymous.get(
        "/benchmarks/api/runs", headers={"Authorization": "Bearer not-a-jwt"}
    ).status_code,
}
page = anonymous.get(
    "/benchmarks/history", headers={"accept": "text/html"}, follow_redirects=False
)
out["page_anonymous"] = [page.status_code, page.headers.get("location")]
runs = anonymous.get("/benchmarks/api/runs", headers=bearer)
out["api_bearer"] = [runs.status_code, len(runs.json()) if runs.status_code == 200 else None]
schema = anonymous.get("/benchmarks/api/openapi.json", headers=bearer)
out["openapi_bearer"] = [
    schema.status_code,
    "/api/runs" in schema.json().get("paths", {}) if schema.status_code == 200 else None,
]
out["docs_bearer"] = [
    anonymous.get(f"/benchmarks/{p}", headers=bearer).status_code for p in ("docs", "redoc")
]
cookie = TestClient(app)
cookie.cookies.set("_token", token)
page = cookie.get("/benchmarks/", headers={"accept": "text/html"})
out["page_cookie"] = [page.status_code, "Benchmark runs" in page.text]
plugins = anonymous.get("/api/v2/plugins", headers=bearer)
out["plugins"] = [
    p for p in plugins.json().get("plugins", []) if p["name"] == "benchmarks"
] if plugins.status_code == 200 else plugins.status_code
print("PROBE " + json.dumps(out))
"""


def test_plugin_pages_and_api_need_an_airflow_login(tmp_path: Path, history: History) -> None:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": "ui-test-secret-" + "x" * 64,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "EMBENCH_UI_DB_URL": history.url,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("PROBE "))
    assert out["api_anonymous"] == 401
    assert out["report_anonymous"] == 401
    assert out["plotly_anonymous"] == 401
    assert out["openapi_anonymous"] == 401  # like every route (issue 17)
    assert out["openapi_bearer"] == [200, True]
    assert out["docs_bearer"] == [404, 404]  # no Swagger UI or ReDoc served
    assert out["api_bad_token"] == 403
    status, location = out["page_anonymous"]
    assert status == 303 and location.startswith("/auth/login?next=")
    assert "benchmarks%2Fhistory" in location
    assert out["api_bearer"] == [200, 2 * history.seeded.nights + 1]
    assert out["page_cookie"] == [200, True]
    [plugin] = out["plugins"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/benchmarks"
    [view] = plugin["external_views"]
    assert view["name"] == "Benchmarks" and view["href"] == "/benchmarks/"
    assert view["url_route"] == "benchmarks"
