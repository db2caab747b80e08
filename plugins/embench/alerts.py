"""Alerts: when a DAG run regresses, or fails, tell someone (benchmark.yaml's `alerts:`).

The DAG's on_success_callback and on_failure_callback are a RunAlert (an Airflow notifier).
When the run ends it reads what the results store holds for the run: each verdict
"regressed" is a finding, named by its model, runtime, variant, scenario and metric, with the
change against the baseline median and that change's 95% interval (the detector's own robust
scale, widened for the baseline's size as the detector widens its thresholds). A failed run
names the tasks that failed, with the errors the DAG's task failure callback recorded. Every
alert links the run's report: its page in the Airflow UI (the Benchmarks plugin's /report,
when the UI's address is known) and its file in the run folder.

Channels: e-mail through Airflow's SMTP provider (its SmtpNotifier and SmtpHook, over an
Airflow connection or a host and port given here) and a webhook (a JSON POST whose `text`
field chat tools such as Slack, Mattermost and Rocket.Chat show; the findings are under
`alert`). One message per run and channel; a channel that fails does not keep the others
from being tried.
"""

from __future__ import annotations

import html
import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import BaseNotifier

from embench.config.schema import AlertsConfig, EmailAlertConfig, WebhookAlertConfig
from embench.errors import EmbenchError
from embench.regression import widened

log = logging.getLogger(__name__)

# The Benchmarks plugin's mount point (plugins/benchmarks_plugin.py) and its report page,
# which takes a DAG run as `run=DAG_ID/DAG_RUN_ID` (the report's resolve_ingest_keys).
REPORT_PAGE = "/benchmarks/report"
REPORT_FILE = "report.html"  # in the run folder (steps.report writes report.md beside it)
CONFIDENCE_Z = 1.959964  # two-sided 95%


# ------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    """One regression verdict of the run, as the alert names it."""

    model: str
    runtime: str
    variant: str
    scenario: str
    metric: str
    kind: str  # night (against its history) | upgrade (after a version change)
    value: float
    baseline_median: float | None
    relative_change: float | None
    change_low: float | None  # the change's 95% interval (relative)
    change_high: float | None
    nights: int  # baseline nights compared with
    z_score: float | None
    reason: str

    @property
    def target(self) -> str:
        return f"{self.model} {self.runtime} {self.variant}, {self.scenario}"

    def change_text(self) -> str:
        if self.relative_change is None:
            return "change unknown"
        text = f"{self.relative_change:+.1%}"
        if self.change_low is not None and self.change_high is not None:
            text += f" (95% interval {self.change_low:+.1%} to {self.change_high:+.1%})"
        return text

    def line(self) -> str:
        baseline = (
            f"{self.baseline_median:.4g}"
            if self.baseline_median is not None
            else "no baseline median"
        )
        kind = " after an upgrade" if self.kind == "upgrade" else ""
        z = f", robust z {self.z_score:+.1f}" if self.z_score is not None else ""
        return (
            f"{self.target}: {self.metric} {self.value:.4g} vs {baseline} (median of "
            f"{self.nights} nights{kind}): change {self.change_text()}{z}"
        )


def change_interval(
    value: float,
    median: float | None,
    scale: float | None,
    nights: int,
    nights_after: int | None = None,
) -> tuple[float, float] | None:
    """The 95% interval of the relative change (value - median) / |median|: the detector's
    robust scale (one night's spread) times sqrt(1 + 1/n) for a night against n baseline
    nights (sqrt(1/after + 1/n) for the median of `nights_after` nights after an upgrade),
    with the Student-t quantile the detector widens its thresholds to for n nights."""
    if median is None or not median or scale is None or nights < 1:
        return None
    after = nights_after if nights_after and nights_after > 0 else None
    spread = scale * math.sqrt((1 / after if after else 1.0) + 1 / nights)
    half = widened(CONFIDENCE_Z, nights) * spread
    change = value - median
    return (change - half) / abs(median), (change + half) / abs(median)


def regression_findings(dag_id: str, run_id: str, engine: Any = None) -> list[Finding]:
    """The stored "regressed" verdicts of a DAG run (detect_regressions stored them)."""
    import sqlalchemy as sa

    from embench.store.db import make_engine, session_scope
    from embench.store.models import Run, ScenarioRow, VerdictRow

    own = engine is None
    engine = engine or make_engine()
    try:
        with session_scope(engine) as session:
            rows = session.execute(
                sa.select(VerdictRow, ScenarioRow.name, Run.model, Run.runtime, Run.variant)
                .join(ScenarioRow, ScenarioRow.id == VerdictRow.scenario_result_id)
                .join(Run, Run.id == ScenarioRow.run_pk)
                .where(
                    Run.dag_id == dag_id,
                    Run.dag_run_id == run_id,
                    VerdictRow.status == "regressed",
                )
                .order_by(Run.model, Run.runtime, Run.variant, ScenarioRow.name, VerdictRow.metric)
            ).all()
            return [
                _finding(v, name, model, runtime, variant)
                for v, name, model, runtime, variant in rows
            ]
    finally:
        if own:
            engine.dispose()


def _finding(verdict: Any, scenario: str, model: str, runtime: str, variant: str) -> Finding:
    details = verdict.details or {}
    interval = change_interval(
        verdict.value,
        verdict.baseline_median,
        details.get("scale"),
        verdict.history_size,
        details.get("nights_after") if verdict.kind == "upgrade" else None,
    )
    return Finding(
        model=model,
        runtime=runtime,
        variant=variant,
        scenario=scenario,
        metric=verdict.metric,
        kind=verdict.kind,
        value=verdict.value,
        baseline_median=verdict.baseline_median,
        relative_change=verdict.relative_change,
        change_low=interval[0] if interval else None,
        change_high=interval[1] if interval else None,
        nights=verdict.history_size,
        z_score=verdict.z_score,
        reason=verdict.reason,
    )


# ---------------------------------------------------------------------------- message


@dataclass(frozen=True)
class RunLinks:
    report_path: str  # the run's HTML report on the workers' data dir
    report_url: str | None  # its page in the Airflow UI (None: the UI's address is unknown)
    run_url: str | None  # the DAG run in the Airflow UI


def airflow_base_url(alerts: AlertsConfig) -> str | None:
    """benchmark.yaml's alerts.airflow_url, else Airflow's [api] base_url."""
    if alerts.airflow_url:
        return alerts.airflow_url.rstrip("/")
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback=None)
    return base.rstrip("/") if base else None


def run_links(alerts: AlertsConfig, dag_id: str, run_id: str, run_dir: Path) -> RunLinks:
    base = airflow_base_url(alerts)
    return RunLinks(
        report_path=str(run_dir / REPORT_FILE),
        report_url=(
            f"{base}{REPORT_PAGE}?run={quote(f'{dag_id}/{run_id}', safe='')}" if base else None
        ),
        run_url=f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
        if base
        else None,
    )


@dataclass(frozen=True)
class RunFailure:
    """Why the run failed: Airflow's reason, and the tasks that failed for good."""

    reason: str
    tasks: list[dict[str, Any]] = field(default_factory=list)  # task_id, map_index, error


@dataclass(frozen=True)
class Alert:
    subject: str
    text: str
    html: str
    payload: dict[str, Any]


def build_alert(
    dag_id: str,
    run_id: str,
    findings: Sequence[Finding],
    failure: RunFailure | None,
    links: RunLinks,
) -> Alert:
    """One message for the run: its regressions and, when it failed, why."""
    what = []
    if failure is not None:
        what.append("failed")
    if findings:
        what.append(f"{len(findings)} regression{'s' if len(findings) != 1 else ''}")
    head = f"{dag_id} {run_id}: {', '.join(what)}"
    subject = f"[embench] {head}"
    if findings:
        first = findings[0]
        subject += f" ({first.target} {first.metric} {first.change_text()}"
        subject += ", ...)" if len(findings) > 1 else ")"
    lines = [head, ""]
    if failure is not None:
        lines.append(f"The run failed ({failure.reason}).")
        for task in failure.tasks:
            index = f"[{task['map_index']}]" if task.get("map_index", -1) >= 0 else ""
            lines.append(f"- {task['task_id']}{index}: {task.get('error') or 'no error recorded'}")
        lines.append("")
    if findings:
        lines.append("Regressions (the night against its comparable history):")
        for finding in findings:
            lines.append(f"- {finding.line()}")
            lines.append(f"  detector: {finding.reason}")
        lines.append("")
    lines.append(f"Report: {links.report_url or links.report_path}")
    if links.report_url:
        lines.append(f"Report file: {links.report_path}")
    if links.run_url:
        lines.append(f"Airflow run: {links.run_url}")
    text = "\n".join(lines)
    payload = {
        "text": text,
        "alert": {
            "dag_id": dag_id,
            "run_id": run_id,
            "failed": failure is not None,
            "failure": asdict(failure) if failure is not None else None,
            "regressions": [asdict(f) for f in findings],
            **asdict(links),
        },
    }
    return Alert(
        subject=subject, text=text, html=_html(head, failure, findings, links), payload=payload
    )


def _html(
    head: str, failure: RunFailure | None, findings: Sequence[Finding], links: RunLinks
) -> str:
    """The e-mail's body: the text's lines, as HTML (the SMTP provider sends HTML)."""

    def e(text: str) -> str:
        return html.escape(text, quote=False)

    def link(url: str) -> str:
        return f'<a href="{html.escape(url, quote=True)}">{e(url)}</a>'

    parts = [f"<h3>{e(head)}</h3>"]
    if failure is not None:
        parts.append(f"<p>The run failed ({e(failure.reason)}).</p><ul>")
        for task in failure.tasks:
            index = f"[{task['map_index']}]" if task.get("map_index", -1) >= 0 else ""
            error = task.get("error") or "no error recorded"
            parts.append(f"<li><b>{e(task['task_id'] + index)}</b>: {e(error)}</li>")
        parts.append("</ul>")
    if findings:
        parts.append("<p>Regressions (the night against its comparable history):</p><ul>")
        parts.extend(
            f"<li><b>{e(f.line())}</b><br><small>detector: {e(f.reason)}</small></li>"
            for f in findings
        )
        parts.append("</ul>")
    if links.report_url:
        parts.append(f"<p>Report: {link(links.report_url)}")
        parts.append(f"<br>Report file: {e(links.report_path)}")
    else:
        parts.append(f"<p>Report: {e(links.report_path)}")
    if links.run_url:
        parts.append(f"<br>Airflow run: {link(links.run_url)}")
    parts.append("</p>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- channels


class _SmtpHookAt(SmtpHook):
    """The provider's hook on a server named in benchmark.yaml (host and port), not by an
    Airflow connection."""

    def __init__(self, config: EmailAlertConfig) -> None:
        super().__init__(smtp_conn_id="embench_alerts")
        self._config = config

    def get_connection(self, conn_id: str) -> Any:  # type: ignore[override]
        from airflow.sdk import Connection

        extra = {
            "disable_ssl": not self._config.ssl,
            "disable_tls": not self._config.starttls,
            "timeout": self._config.timeout_s,
            "retry_limit": 1,
        }
        return Connection(
            conn_id=conn_id,
            conn_type="smtp",
            host=self._config.host,
            port=self._config.port,
            extra=json.dumps(extra),
        )


def _charset(body: str) -> str:
    """us-ascii (sent as it is, readable in the raw message) where the body allows it: ASCII,
    and no line beyond SMTP's limit; else utf-8 (which the provider sends base64-encoded)."""
    plain = body.isascii() and all(len(line) <= 900 for line in body.splitlines())
    return "us-ascii" if plain else "utf-8"


class EmailNotifier(SmtpNotifier):
    """The SMTP provider's notifier with the alert's subject and body as they are (no Jinja:
    the text is sent, not rendered) and, where benchmark.yaml names a host, that server."""

    template_fields = ()

    def __init__(self, config: EmailAlertConfig, subject: str, html_content: str) -> None:
        super().__init__(
            to=list(config.to),
            from_email=config.from_,
            subject=subject,
            html_content=html_content,
            smtp_conn_id=None if config.host else config.smtp_conn_id,
            custom_headers={"X-Embench-Alert": "1"},
            mime_charset=_charset(html_content),
        )
        self.config = config

    @cached_property
    def hook(self) -> SmtpHook:
        if self.config.host:
            return _SmtpHookAt(self.config)
        return SmtpHook(smtp_conn_id=self.smtp_conn_id, auth_type=self.auth_type)


class WebhookNotifier(BaseNotifier):
    """POST the alert's JSON to a chat tool's incoming webhook."""

    template_fields = ()

    def __init__(self, config: WebhookAlertConfig, payload: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.payload = payload

    def url(self) -> str:
        if self.config.url:
            return self.config.url
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(str(self.config.conn_id))
        host = conn.host or ""
        if "://" in host:
            return host
        port = f":{conn.port}" if conn.port else ""
        if not host:
            raise EmbenchError(f"connection {self.config.conn_id!r} gives no host (the URL)")
        return f"{conn.schema or 'https'}://{host}{port}"

    def notify(self, context: Any) -> None:
        url = self.url()
        request = urllib.request.Request(
            url,
            data=json.dumps(self.payload).encode("utf-8"),
            headers={"Content-Type": "application/json", "User-Agent": "embench-alerts"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise EmbenchError(f"webhook answered HTTP {exc.code}: {exc.reason}") from None
        except OSError as exc:
            raise EmbenchError(f"webhook unreachable: {exc}") from None


def channels(alerts: AlertsConfig, alert: Alert) -> list[BaseNotifier]:
    """The notifiers benchmark.yaml configures, each holding the alert."""
    out: list[BaseNotifier] = []
    if alerts.email is not None:
        out.append(EmailNotifier(alerts.email, alert.subject, alert.html))
    if alerts.webhook is not None:
        out.append(WebhookNotifier(alerts.webhook, alert.payload))
    return out


def send(alerts: AlertsConfig, alert: Alert, context: Any) -> None:
    """Send through every channel; raises (naming each) when any failed, after trying all."""
    errors = []
    for notifier in channels(alerts, alert):
        name = type(notifier).__name__
        try:
            notifier.notify(context)
            log.info("alert sent by %s: %s", name, alert.subject)
        except Exception as exc:  # the next channel must still be tried
            log.error("alert not sent by %s: %s", name, exc)
            errors.append(f"{name}: {exc}")
    if errors:
        raise EmbenchError(f"alert not sent: {'; '.join(errors)}")


# ------------------------------------------------------------------------ the callback


def run_alert(
    alerts: AlertsConfig,
    dag_id: str,
    run_id: str,
    run_dir: Path,
    failure: RunFailure | None,
    engine: Any = None,
) -> Alert | None:
    """The alert for a finished run, None when benchmark.yaml asks for none for it."""
    findings: list[Finding] = []
    if "regression" in alerts.events:
        try:
            findings = regression_findings(dag_id, run_id, engine)
        except Exception as exc:  # no store, no tables: no findings to tell (a failure may)
            log.warning("cannot read the run's verdicts: %s", exc)
    failure = failure if "failure" in alerts.events else None
    if not findings and failure is None:
        return None
    return build_alert(
        dag_id, run_id, findings, failure, run_links(alerts, dag_id, run_id, run_dir)
    )


def run_failure(context: Any, run_dir: Path) -> RunFailure:
    """Why the run failed: the failures the task callback recorded in the run folder, else
    the task Airflow names."""
    from embench.run_outcome import failures

    tasks = [
        {"task_id": r["task_id"], "map_index": r.get("map_index", -1), "error": r.get("error")}
        for r in failures(run_dir)
    ]
    ti = context.get("ti")
    if not tasks and ti is not None:
        index = ti.map_index if ti.map_index is not None else -1
        tasks = [{"task_id": ti.task_id, "map_index": index, "error": None}]
    return RunFailure(reason=str(context.get("reason") or "failed"), tasks=tasks)


class RunAlert(BaseNotifier):
    """The DAG run's callback (success or failure): reads what the run found and sends the
    alert benchmark.yaml asks for, if any."""

    template_fields = ()

    def __init__(self, alerts: AlertsConfig, failed: bool) -> None:
        super().__init__()
        self.alerts = alerts
        self.failed = failed

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render (no template fields); and dag.test() hands DAG callbacks a
        SerializedDAG, which has no template environment to make one with."""

    def notify(self, context: Any) -> None:
        from embench.steps import RunContext

        dag = context.get("dag")
        dag_id = dag.dag_id if dag is not None else context["ti"].dag_id
        run_id = str(context["run_id"])
        run_dir = RunContext(dag_id=dag_id, run_id=run_id).run_dir()
        failure = run_failure(context, run_dir) if self.failed else None
        alert = run_alert(self.alerts, dag_id, run_id, run_dir, failure)
        if alert is not None:
            send(self.alerts, alert, context)


def dag_callbacks(alerts: AlertsConfig) -> dict[str, Any]:
    """The DAG's on_success_callback and on_failure_callback; none without a channel."""
    if (alerts.email is None and alerts.webhook is None) or not alerts.events:
        return {}
    return {
        "on_success_callback": RunAlert(alerts, failed=False),
        "on_failure_callback": RunAlert(alerts, failed=True),
    }
