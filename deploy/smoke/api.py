"""The compose smoke test's REST client (standard library only, runs on the host):
log in, wait for the DAG, unpause it, trigger it with a conf, wait for the run's end.

    python3 deploy/smoke/api.py --url http://127.0.0.1:8080 --user admin \
        --password-env AIRFLOW_ADMIN_PASSWORD trigger --conf '{"launcher": "process"}'

Prints one JSON line with the run id and state; exits 1 with the reason on any failure."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

DAG_ID = "embedding_benchmark"


class Api:
    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url.rstrip("/")
        token = self.call("POST", "/auth/token", {"username": user, "password": password})
        self.token = token["access_token"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if getattr(self, "token", None):
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise SystemExit(f"smoke: {method} {path}: HTTP {exc.code}: {detail}") from None
        return json.loads(raw) if raw else None


def log(message: str) -> None:
    print(f"[smoke-api] {message}", file=sys.stderr, flush=True)


def wait_for_dag(api: Api, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            api.call("GET", f"/api/v2/dags/{DAG_ID}")
            return
        except SystemExit as exc:
            if "HTTP 404" not in str(exc):
                raise
        time.sleep(5)
    errors = api.call("GET", "/api/v2/importErrors")
    raise SystemExit(
        f"smoke: DAG {DAG_ID} not parsed after {timeout_s:.0f} s; import errors: "
        f"{json.dumps(errors)[:3000]}"
    )


def task_states(api: Api, run_id: str) -> list[str]:
    tis = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
    return [
        f"{ti['task_id']}[{ti.get('map_index', -1)}]={ti.get('state')}"
        for ti in tis.get("task_instances", [])
    ]


def trigger(api: Api, conf: dict[str, Any], dag_timeout_s: float, run_timeout_s: float) -> int:
    wait_for_dag(api, dag_timeout_s)
    log(f"DAG {DAG_ID} is parsed; unpausing it")
    api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    run_id = run["dag_run_id"]
    log(f"triggered {run_id} with conf {json.dumps(conf)}")
    started = time.monotonic()
    state = run.get("state")
    last = ""
    while time.monotonic() - started < run_timeout_s:
        state = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        progress = " ".join(task_states(api, run_id))
        if progress != last:
            log(f"{time.monotonic() - started:5.0f} s {state}: {progress}")
            last = progress
        if state in ("success", "failed"):
            break
        time.sleep(5)
    print(
        json.dumps(
            {"dag_run_id": run_id, "state": state, "seconds": round(time.monotonic() - started, 1)}
        )
    )
    if state != "success":
        log(f"run {run_id} ended {state}: {last}")
        return 1
    return 0


def status_of(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """HTTP status and body of a GET that may fail (no redirects followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def check_plugin(api: Api, run_id: str) -> int:
    """The Benchmarks plugin in the stack: behind login, and showing the run just stored."""
    base = f"{api.url}/benchmarks"
    anonymous_api, _ = status_of(f"{base}/api/runs", {})
    anonymous_page, _ = status_of(f"{base}/", {})
    if anonymous_api != 401 or anonymous_page not in (302, 303, 307, 401):
        log(f"plugin without login: API {anonymous_api}, page {anonymous_page}")
        return 1
    auth = {"Authorization": f"Bearer {api.token}"}
    code, body = status_of(f"{base}/api/runs", auth)
    if code != 200 or run_id not in body:
        log(f"plugin API with login: HTTP {code}; run {run_id} listed: {run_id in body}")
        return 1
    code, page = status_of(f"{base}/", {"Cookie": f"_token={api.token}"})
    if code != 200 or "Benchmarks" not in page:
        log(f"plugin page with login: HTTP {code}")
        return 1
    entries = api.call("GET", "/api/v2/plugins")["plugins"]
    views = [v for p in entries for v in p.get("external_views", [])]
    if not any(v.get("name") == "Benchmarks" for v in views):
        log("no Benchmarks entry among the UI's plugin views")
        return 1
    log(f"plugin: 401 / {anonymous_page} without login; API and page 200 with it; run listed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-env", default="AIRFLOW_ADMIN_PASSWORD")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("trigger")
    run.add_argument("--conf", default="{}")
    run.add_argument("--dag-timeout", type=float, default=300)
    run.add_argument("--run-timeout", type=float, default=900)
    plugin = sub.add_parser("plugin", help="check the Benchmarks pages behind login")
    plugin.add_argument("--run-id", required=True)
    args = parser.parse_args()
    password = os.environ.get(args.password_env)
    if not password:
        raise SystemExit(f"smoke: ${args.password_env} is not set")
    api = Api(args.url, args.user, password)
    if args.command == "plugin":
        return check_plugin(api, args.run_id)
    return trigger(api, json.loads(args.conf), args.dag_timeout, args.run_timeout)


if __name__ == "__main__":
    sys.exit(main())
