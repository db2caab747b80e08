"""The compose smoke test's REST client (standard library only, runs on the host): log in,
wait for the DAG, unpause it, and either wait for the scheduled run and a manual one with
the form's defaults (`defaults`), or start a run without waiting (`start`).

    python3 deploy/smoke/api.py --url http://127.0.0.1:8080 --user admin \
        --password-env AIRFLOW_ADMIN_PASSWORD defaults

Prints one JSON line; exits 1 with the reason on any failure."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
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


def task_hostnames(api: Api, run_id: str) -> list[str]:
    tis = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
    return sorted({ti["hostname"] for ti in tis.get("task_instances", []) if ti.get("hostname")})


def unpause(api: Api, dag_timeout_s: float) -> None:
    wait_for_dag(api, dag_timeout_s)
    log(f"DAG {DAG_ID} is parsed; unpausing it")
    api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})


def trigger_run(api: Api, conf: dict[str, Any] | None) -> str:
    """A manual run; with conf None the body carries no conf: the form's defaults apply."""
    body: dict[str, Any] = {"logical_date": None}
    if conf is not None:
        body["conf"] = conf
    run_id = str(api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", body)["dag_run_id"])
    log(f"triggered {run_id} with {'conf ' + json.dumps(conf) if conf is not None else 'no conf'}")
    return run_id


def scheduled_run(api: Api, timeout_s: float) -> str:
    """The run the scheduler creates on unpause (the latest interval, catchup off)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?run_type=scheduled&limit=5")
        if runs["dag_runs"]:
            run_id = str(runs["dag_runs"][0]["dag_run_id"])
            log(f"the scheduler created {run_id}")
            return run_id
        time.sleep(2)
    raise SystemExit(f"smoke: no scheduled run within {timeout_s:.0f} s of unpausing")


def wait_run(api: Api, run_id: str, timeout_s: float) -> dict[str, Any]:
    """Poll until the run ends; its state, seconds from now and task states."""
    started = time.monotonic()
    state, last = "", ""
    while time.monotonic() - started < timeout_s:
        run = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
        state = run["state"]
        progress = " ".join(task_states(api, run_id))
        if progress != last:
            log(f"{run_id}: {time.monotonic() - started:5.0f} s {state}: {progress}")
            last = progress
        if state in ("success", "failed"):
            break
        time.sleep(5)
    return {
        "dag_run_id": run_id,
        "state": state,
        "wall_s": _wall_seconds(run),
        "tasks": last.split(),
        # Where the task instances ran: the hostnames of the containers (scheduler or workers).
        "hostnames": task_hostnames(api, run_id),
        # The docker launcher ran the load client in a container (on the host: " on NAME").
        "client_container": _first(
            task_log(api, run_id, "benchmark.run_benchmark"),
            r"the load client runs in container [\w.-]+ \([\w.:/-]+\) on [\w.-]+",
        ),
        "shipped": _first(
            task_log(api, run_id, "benchmark.ship_to_host"), r"shipped to [\w.-]+ in [0-9.]+ s"
        ),
    }


def task_log(api: Api, run_id: str, task: str, map_index: int = 0) -> str:
    """The text of the last try's log of a task of the run."""
    base = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task}"
    try_number = api.call("GET", f"{base}/{map_index}").get("try_number") or 1
    log_json = api.call("GET", f"{base}/logs/{try_number}?map_index={map_index}&full_content=true")
    return json.dumps(log_json)


def _first(text: str, pattern: str) -> str | None:
    found = re.search(pattern, text)
    return found.group(0) if found else None


def _wall_seconds(run: dict[str, Any]) -> float | None:
    if not run.get("start_date") or not run.get("end_date"):
        return None
    start, end = (datetime.fromisoformat(run[k]) for k in ("start_date", "end_date"))
    return round((end - start).total_seconds(), 1)


def run_defaults(
    api: Api, dag_timeout_s: float, run_timeout_s: float, also: dict[str, Any] | None = None
) -> int:
    """As a new user does: unpause (the scheduler starts the latest interval's run), and
    trigger a run with the form untouched; both must succeed with the DAG's defaults. With
    `also`, a third run with that conf must succeed too."""
    unpause(api, dag_timeout_s)
    run_ids = [scheduled_run(api, 120), trigger_run(api, None)]
    if also is not None:
        run_ids.append(trigger_run(api, also))
    results = [wait_run(api, run_id, run_timeout_s) for run_id in run_ids]
    print(json.dumps({"runs": results}))
    failed = [r for r in results if r["state"] != "success"]
    for result in failed:
        log(f"run {result['dag_run_id']} ended {result['state']}: {' '.join(result['tasks'])}")
    return 1 if failed else 0


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
    defaults = sub.add_parser(
        "defaults", help="unpause; the scheduled run and a manual one with no conf must succeed"
    )
    defaults.add_argument("--dag-timeout", type=float, default=300)
    defaults.add_argument("--run-timeout", type=float, default=900)
    defaults.add_argument("--also-conf", help="JSON conf of a third run (default: none)")
    start = sub.add_parser("start", help="unpause and trigger a run; print its id, do not wait")
    start.add_argument("--conf", help="JSON (default: none, the form's defaults)")
    start.add_argument("--dag-timeout", type=float, default=300)
    plugin = sub.add_parser("plugin", help="check the Benchmarks pages behind login")
    plugin.add_argument("--run-id", required=True)
    args = parser.parse_args()
    password = os.environ.get(args.password_env)
    if not password:
        raise SystemExit(f"smoke: ${args.password_env} is not set")
    api = Api(args.url, args.user, password)
    if args.command == "plugin":
        return check_plugin(api, args.run_id)
    if args.command == "start":
        unpause(api, args.dag_timeout)
        print(trigger_run(api, json.loads(args.conf) if args.conf else None))
        return 0
    also = json.loads(args.also_conf) if args.also_conf else None
    return run_defaults(api, args.dag_timeout, args.run_timeout, also)


if __name__ == "__main__":
    sys.exit(main())
