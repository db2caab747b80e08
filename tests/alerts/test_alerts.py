"""Alerts from stored findings, sent for real: the e-mail through Airflow's SMTP provider to
an SMTP server started here, the webhook as a JSON POST to an HTTP server started here. The
findings are the detector's own verdicts on seeded nights (tests/store/factory.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.sdk import DAG

from embench import alerts
from embench.config import load_config
from embench.config.schema import AlertsConfig
from embench.errors import ConfigError, EmbenchError
from embench.regression import DetectorSettings
from embench.run_outcome import record_failure
from embench.steps import RunContext
from embench.store.db import make_engine, upgrade_to_head
from embench.store.detect import detect_dag_run
from embench.store.ingest import ingest_result
from tests.store.factory import MODEL, run_result

from .conftest import SmtpServer, Webhook

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "embedding_benchmark"
TONIGHT = 8
RUN_ID = f"scheduled__night-{TONIGHT}"  # the factory's DAG run id of a night
AIRFLOW_URL = "http://airflow.example:8080"
CHANGE = re.compile(
    r"change (?P<change>[+-]\d+\.\d)% \(95% interval (?P<low>[+-]\d+\.\d)% to "
    r"(?P<high>[+-]\d+\.\d)%\)"
)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A migrated SQLite results store, and the data dir, as the DAG's environment names them."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    monkeypatch.setenv("EMBENCH_DB_URL", url)
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))
    engine = make_engine(url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


def seed_regression(engine: Any) -> list[dict[str, Any]]:
    """Seven steady nights at 100 QPS, then two at 80: tonight regressed (-20%), confirmed by
    the night before. Returns the detector's verdicts on tonight's DAG run."""
    for night in range(TONIGHT - 1):
        ingest_result(engine, run_result(night, qps=100.0 + (night % 3), repetition=0))
    ingest_result(engine, run_result(TONIGHT - 1, qps=80.0, repetition=0))
    ingest_result(engine, run_result(TONIGHT, qps=80.5, repetition=0))
    return detect_dag_run(engine, DAG_ID, RUN_ID, DetectorSettings(), ["qps"])


def config(smtp: SmtpServer, hook: Webhook | None, **extra: Any) -> AlertsConfig:
    email = {
        "to": ["oncall@example.com"],
        "from": "bench@example.com",
        "host": smtp.host,
        "port": smtp.port,
    }
    return AlertsConfig.model_validate(
        {
            "email": email,
            **({"webhook": {"url": hook.url}} if hook else {}),
            "airflow_url": AIRFLOW_URL,
            **extra,
        }
    )


def context(reason: str = "success") -> dict[str, Any]:
    """What Airflow hands a DAG callback (the dag processor's minimal context)."""
    return {"dag": DAG(DAG_ID, schedule=None), "run_id": RUN_ID, "reason": reason}


def report_url(run_id: str = RUN_ID) -> str:
    return f"{AIRFLOW_URL}/benchmarks/report?run={DAG_ID}%2F{run_id.replace(':', '%3A')}"


def test_a_regression_alert_names_the_metric_the_change_its_interval_and_the_report(
    store: Any, smtp_server: SmtpServer, webhook: Webhook
) -> None:
    regressed = [v for v in seed_regression(store) if v["status"] == "regressed"]
    assert len(regressed) == 2, regressed  # closed-c1 and closed-c4, qps each
    report_file = RunContext(DAG_ID, RUN_ID).run_dir() / "report.html"

    alerts.RunAlert(config(smtp_server, webhook), failed=False)(context())

    [mail] = smtp_server.received
    assert mail.mail_from == "bench@example.com" and mail.rcpt_tos == ["oncall@example.com"]
    subject = mail.message["Subject"]
    assert subject.startswith(f"[embench] {DAG_ID} {RUN_ID}: 2 regressions")
    assert f"{MODEL} onnxruntime fp32, closed-c1 qps -" in subject and "95% interval" in subject
    body = mail.body()
    text = webhook.posts[0]["json"]["text"]
    for verdict in regressed:
        change = f"{verdict['relative_change']:+.1%}"
        for where in (body, text):
            assert f"{MODEL} onnxruntime fp32, {verdict['scenario']}: qps 80.5 vs" in where
            assert f"change {change} (95% interval" in where
    for where in (body, text):
        for found in CHANGE.finditer(where):
            low, change, high = (float(found[k]) for k in ("low", "change", "high"))
            assert low < change < high < 0  # a drop, and the interval excludes no change
        assert len(CHANGE.findall(where)) == 2
        assert report_url() in where and str(report_file) in where
        assert f"{AIRFLOW_URL}/dags/{DAG_ID}/runs/{RUN_ID}" in where
    assert f'<a href="{report_url()}">' in body

    [post] = webhook.posts
    assert post["path"] == "/hooks/bench"
    assert post["headers"]["Content-Type"] == "application/json"
    alert = post["json"]["alert"]
    assert alert["dag_id"] == DAG_ID and alert["run_id"] == RUN_ID and not alert["failed"]
    assert alert["report_url"] == report_url() and alert["report_path"] == str(report_file)
    by_scenario = {r["scenario"]: r for r in alert["regressions"]}
    assert set(by_scenario) == {"closed-c1", "closed-c4"}
    for verdict in regressed:
        finding = by_scenario[verdict["scenario"]]
        assert finding["metric"] == "qps" and finding["value"] == 80.5
        assert finding["relative_change"] == pytest.approx(verdict["relative_change"])
        assert finding["change_low"] < finding["relative_change"] < finding["change_high"] < 0
        assert finding["nights"] == verdict["history_size"]


def test_a_failed_run_alert_names_the_failed_task_its_error_and_the_report(
    store: Any, smtp_server: SmtpServer, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the SMTP server through an Airflow connection this time (as a deployment names it)
    conn = {
        "conn_type": "smtp",
        "host": smtp_server.host,
        "port": smtp_server.port,
        "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "af@example.com"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_EMBENCH_SMTP", json.dumps(conn))
    cfg = AlertsConfig.model_validate(
        {
            "email": {"to": ["oncall@example.com"], "smtp_conn_id": "embench_smtp"},
            "webhook": {"url": webhook.url},
            "airflow_url": AIRFLOW_URL,
        }
    )
    run_dir = RunContext(DAG_ID, RUN_ID).run_dir()
    record_failure(
        run_dir, "benchmark.run_benchmark", 0, 3, "EmbenchError: the server stopped — OOM"
    )

    alerts.RunAlert(cfg, failed=True)(context("task_failure"))

    [mail] = smtp_server.received
    assert mail.mail_from == "af@example.com"  # the connection's sender
    assert mail.message.get_body().get_content_charset() == "utf-8"  # not ASCII: base64
    assert mail.message["Subject"] == f"[embench] {DAG_ID} {RUN_ID}: failed"
    body = mail.body()
    text = webhook.posts[0]["json"]["text"]
    for where in (body, text):
        assert "The run failed (task_failure)" in where
        assert (
            "benchmark.run_benchmark[0]" in where
            and "EmbenchError: the server stopped — OOM" in where
        )
        assert report_url() in where and str(run_dir / "report.html") in where
    failure = webhook.posts[0]["json"]["alert"]["failure"]
    assert failure["tasks"] == [
        {
            "task_id": "benchmark.run_benchmark",
            "map_index": 0,
            "error": "EmbenchError: the server stopped — OOM",
        }
    ]
    assert webhook.posts[0]["json"]["alert"]["regressions"] == []


def test_a_failed_run_with_regressions_tells_both_in_one_message(
    store: Any, smtp_server: SmtpServer
) -> None:
    seed_regression(store)
    alerts.RunAlert(config(smtp_server, None), failed=True)(context("task_failure"))
    [mail] = smtp_server.received
    assert mail.message["Subject"].startswith(f"[embench] {DAG_ID} {RUN_ID}: failed, 2 regressions")


def test_nothing_is_sent_for_a_run_without_findings_or_for_events_not_asked_for(
    store: Any, smtp_server: SmtpServer, webhook: Webhook
) -> None:
    alerts.RunAlert(config(smtp_server, webhook), failed=False)(context())  # nothing stored
    seed_regression(store)
    only_failures = config(smtp_server, webhook, events=["failure"])
    alerts.RunAlert(only_failures, failed=False)(context())
    assert smtp_server.received == [] and webhook.posts == []
    alerts.RunAlert(config(smtp_server, webhook, events=["regression"]), failed=True)(context("x"))
    assert (
        len(smtp_server.received) == 1
        and "failed" not in smtp_server.received[0].message["Subject"]
    )


def test_a_channel_that_fails_does_not_keep_the_other_from_sending(
    store: Any, smtp_server: SmtpServer, webhook: Webhook
) -> None:
    seed_regression(store)
    webhook.status = 500
    with pytest.raises(EmbenchError, match=r"WebhookNotifier: webhook answered HTTP 500"):
        alerts.RunAlert(config(smtp_server, webhook), failed=False)(context())
    assert len(smtp_server.received) == 1 and len(webhook.posts) == 1


def test_the_webhook_url_from_an_airflow_connection(
    store: Any, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_regression(store)
    monkeypatch.setenv("AIRFLOW_CONN_CHAT", json.dumps({"conn_type": "http", "host": webhook.url}))
    cfg = AlertsConfig.model_validate({"webhook": {"conn_id": "chat"}})
    alerts.RunAlert(cfg, failed=False)(context())
    [post] = webhook.posts
    assert post["json"]["text"].startswith(f"{DAG_ID} {RUN_ID}: 2 regressions")


# -- configuration ----------------------------------------------------------------------------


def write_config(tmp_path: Path, alerts_section: Any) -> Path:
    for name in ("models.yaml", "prices.yaml"):
        (tmp_path / name).write_text((REPO_ROOT / "config" / name).read_text())
    bench = yaml.safe_load((REPO_ROOT / "config" / "benchmark.yaml").read_text())
    bench["alerts"] = alerts_section
    (tmp_path / "benchmark.yaml").write_text(yaml.safe_dump(bench, sort_keys=False))
    return tmp_path


def test_the_shipped_config_sends_no_alert() -> None:
    shipped = load_config(REPO_ROOT / "config").benchmark.alerts
    assert shipped.email is None and shipped.webhook is None
    assert alerts.dag_callbacks(shipped) == {}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"email": {"to": ["a@example.com"], "frm": "b@example.com"}},
            r"alerts\.email\.frm: unknown key 'frm' \(did you mean 'from'\?\)",
        ),
        (
            {"email": {"to": ["a@example.com"], "host": "mail.example.com"}},
            r"alerts\.email: from: required with host",
        ),
        (
            {"email": {"to": ["not-an-address"], "smtp_conn_id": "smtp_default"}},
            r"alerts\.email\.to\[0\]: string should match pattern",
        ),
        (
            {"webhook": {"url": "http://x.example", "conn_id": "chat"}},
            r"alerts\.webhook: give exactly one of url and conn_id",
        ),
        (
            {"webhook": {"url": "hooks.slack.com/services/T/B/X"}},
            r"alerts\.webhook\.url: string should match pattern",
        ),
        (
            {"events": ["regressions"]},
            r"alerts\.events\[0\]: input should be 'regression' or 'failure'",
        ),
        ({"on": ["failure"]}, r"alerts: `on` \(which YAML reads as true\) is no key here"),
    ],
)
def test_a_bad_alerts_section_names_the_key(tmp_path: Path, section: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, section))


def test_a_configured_channel_gives_the_dag_its_callbacks(tmp_path: Path) -> None:
    section = {"events": ["failure"], "webhook": {"url": "https://chat.example/hook"}}
    callbacks = alerts.dag_callbacks(load_config(write_config(tmp_path, section)).benchmark.alerts)
    assert isinstance(callbacks["on_success_callback"], alerts.RunAlert)
    assert callbacks["on_failure_callback"].failed
