"""`embench trigger`: a gate a CI/CD pipeline can call. It starts the benchmark DAG through
Airflow's REST API (a JWT from /auth/token, as any API client; no UI scraping), waits for the
run with a progress line, prints the run's verdicts and answers with an exit code:

  0  the run succeeded and nothing regressed (A/B: no candidate slower than its baseline)
  1  a regression (or a slower candidate) was found
  2  bad input: options, conf, or a trigger Airflow refused (its message is printed)
  3  the run failed, or did not finish in time, or Airflow could not be reached

The verdicts are what the run's judging tasks returned (their XCom, read through the API)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

DAG_ID = "embedding_benchmark"
JUDGE_TASK = "detect_regressions"
AB_TASK = "compare_ab"
FINISHED = ("success", "failed")
EXIT_OK, EXIT_REGRESSED, EXIT_BAD_INPUT, EXIT_FAILED = 0, 1, 2, 3


class GateError(Exception):
    """The gate cannot go on; exit_code says how it ended."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class AirflowApi:
    """Airflow's REST API (v2) as one user: a JWT from /auth/token (or a token given)."""

    base_url: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    timeout_s: float = 30.0
    _client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout_s)

    @classmethod
    def from_env(cls, base_url: str | None = None) -> AirflowApi:
        """The API at --url / EMBENCH_AIRFLOW_URL, as EMBENCH_AIRFLOW_TOKEN or as
        EMBENCH_AIRFLOW_USER with EMBENCH_AIRFLOW_PASSWORD."""
        url = base_url or os.environ.get("EMBENCH_AIRFLOW_URL") or "http://localhost:8080"
        return cls(
            url,
            username=os.environ.get("EMBENCH_AIRFLOW_USER"),
            password=os.environ.get("EMBENCH_AIRFLOW_PASSWORD"),
            token=os.environ.get("EMBENCH_AIRFLOW_TOKEN"),
        )

    def close(self) -> None:
        self._client.close()

    def login(self) -> str:
        if self.token:
            return self.token
        if not self.username or not self.password:
            raise GateError(
                "no credentials for Airflow's API: set EMBENCH_AIRFLOW_TOKEN, or "
                "EMBENCH_AIRFLOW_USER and EMBENCH_AIRFLOW_PASSWORD",
                EXIT_BAD_INPUT,
            )
        response = self._send(
            "POST", "/auth/token", json={"username": self.username, "password": self.password}
        )
        if response.status_code in (401, 403):
            raise GateError(
                f"Airflow at {self.base_url} refused the login of {self.username!r} "
                f"({response.status_code})",
                EXIT_BAD_INPUT,
            )
        _check(response, "log in")
        self.token = str(response.json()["access_token"])
        return self.token

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.login()}"}
        return self._send(method, f"/api/v2{path}", headers=headers, **kwargs)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GateError(
                f"Airflow at {self.base_url} cannot be reached: {exc}", EXIT_FAILED
            ) from None

    # ---- the run ------------------------------------------------------------------------------
    def trigger(self, dag_id: str, conf: dict[str, Any], note: str | None = None) -> str:
        """Start a run of the DAG with this conf (its params); returns the run id."""
        body: dict[str, Any] = {"conf": conf, "logical_date": None}
        if note:
            body["note"] = note
        response = self.call("POST", f"/dags/{dag_id}/dagRuns", json=body)
        if response.status_code in (400, 404, 409, 422):
            raise GateError(
                f"Airflow refused the run ({response.status_code}): {_detail(response)}",
                EXIT_BAD_INPUT,
            )
        _check(response, "trigger the run")
        return str(response.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        _check(response, "read the run")
        return str(response.json()["state"])

    def task_states(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        response = self.call(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )
        _check(response, "read the run's tasks")
        return list(response.json()["task_instances"])

    def returned(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """What the task returned (its return_value XCom), or None where it has none."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        response = self.call("GET", path, params={"deserialize": True, "stringify": False})
        if response.status_code == 404:
            return None
        _check(response, f"read what {task_id} returned")
        return response.json().get("value")


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:1000]


def _check(response: httpx.Response, doing: str) -> None:
    if response.status_code >= 400:
        raise GateError(
            f"could not {doing}: Airflow answered {response.status_code}: {_detail(response)}",
            EXIT_FAILED,
        )


# ---- waiting ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    state: str
    elapsed_s: float
    done: int
    failed: int
    running: list[str]
    total: int

    def line(self) -> str:
        running = ", ".join(sorted(set(self.running))[:3]) or "-"
        return (
            f"{self.state:<8} {self.elapsed_s:6.0f} s  tasks {self.done}/{self.total} done, "
            f"{self.failed} failed  running: {running}"
        )


def wait_for_run(
    api: AirflowApi,
    dag_id: str,
    run_id: str,
    *,
    timeout_s: float,
    poll_s: float = 5.0,
    on_progress: Callable[[Progress], None] | None = None,
) -> str:
    """Poll the run until it ends; its final state. GateError (EXIT_FAILED) at the deadline."""
    started = time.monotonic()
    while True:
        state = api.run_state(dag_id, run_id)
        if on_progress is not None:
            tasks = api.task_states(dag_id, run_id)
            on_progress(
                Progress(
                    state=state,
                    elapsed_s=time.monotonic() - started,
                    done=sum(t["state"] in ("success", "skipped") for t in tasks),
                    failed=sum(t["state"] in ("failed", "upstream_failed") for t in tasks),
                    running=[t["task_id"] for t in tasks if t["state"] == "running"],
                    total=len(tasks),
                )
            )
        if state in FINISHED:
            return state
        if time.monotonic() - started > timeout_s:
            raise GateError(
                f"run {run_id} did not finish within {timeout_s:.0f} s (still {state})",
                EXIT_FAILED,
            )
        time.sleep(poll_s)


# ---- verdicts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateResult:
    run_id: str
    state: str
    regressions: list[dict[str, Any]]
    ab_verdicts: list[dict[str, Any]]
    failed_tasks: list[str]

    @property
    def slower(self) -> list[dict[str, Any]]:
        return [v for v in self.ab_verdicts if v.get("verdict") == "slower"]

    @property
    def regressed(self) -> list[dict[str, Any]]:
        return [v for v in self.regressions if v.get("status") == "regressed"]

    @property
    def exit_code(self) -> int:
        # A failed task fails the gate even where the run's state does not say so (a DAG
        # whose last task runs whatever happened before it ends "success").
        if self.state != "success" or self.failed_tasks:
            return EXIT_FAILED
        return EXIT_REGRESSED if self.regressed or self.slower else EXIT_OK


def collect(api: AirflowApi, dag_id: str, run_id: str, state: str) -> GateResult:
    tasks = api.task_states(dag_id, run_id)
    failed = sorted(
        f"{t['task_id']}[{t['map_index']}]" if t.get("map_index", -1) >= 0 else t["task_id"]
        for t in tasks
        if t["state"] in ("failed", "upstream_failed")
    )
    ids = {t["task_id"] for t in tasks}
    regressions = api.returned(dag_id, run_id, JUDGE_TASK) if JUDGE_TASK in ids else None
    ab = api.returned(dag_id, run_id, AB_TASK) if AB_TASK in ids else None
    return GateResult(
        run_id=run_id,
        state=state,
        regressions=list(regressions or []),
        ab_verdicts=list(ab or []),
        failed_tasks=failed,
    )


def describe(result: GateResult) -> list[str]:
    """The lines the gate prints: the run, each verdict, and why it exits as it does."""
    lines = [f"run {result.run_id}: {result.state}"]
    for task in result.failed_tasks:
        lines.append(f"  failed task: {task}")
    for verdict in result.ab_verdicts:
        ratio, low, high = (verdict.get(k) for k in ("ratio", "low", "high"))
        figures = "-" if ratio is None else f"{ratio:.3f} [{low:.3f}, {high:.3f}]"
        lines.append(
            f"  A/B {verdict.get('target', '')} {verdict.get('metric')}: candidate/baseline "
            f"{figures} -> {verdict.get('verdict')}"
        )
    for verdict in result.regressions:
        if verdict.get("status") in ("regressed", "improved", "explained"):
            lines.append(
                f"  {verdict['status']:<10} {verdict.get('scenario')} {verdict.get('metric')}: "
                f"{verdict.get('reason', '')}"
            )
    unchanged = [v for v in result.regressions if v.get("status") == "unchanged"]
    first = [v for v in result.regressions if v.get("status") == "no_baseline"]
    if unchanged or first:
        lines.append(
            f"  {len(unchanged)} figure(s) unchanged, {len(first)} with no history to judge by"
        )
    if not result.regressions and not result.ab_verdicts:
        lines.append("  no verdicts (nothing was judged)")
    if result.exit_code == EXIT_FAILED:
        lines.append("gate: FAILED (the run did not succeed)")
    elif result.exit_code == EXIT_REGRESSED:
        count = len(result.regressed) + len(result.slower)
        lines.append(f"gate: REGRESSED ({count} finding(s))")
    else:
        lines.append("gate: passed")
    return lines
