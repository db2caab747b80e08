"""The alerts through a real DAG run: the embedding_benchmark DAG run once with dag.test()
(tests/alerts/dag_run.py: the benchmark groups marked success, tonight's result stored in
their place), its real detect_regressions finding a 20% drop against the seeded history, its
real report, and its own callbacks sending the alert to the SMTP server and the webhook
receiver this test starts. A run that fails (fail_on_regression) alerts its failure too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from embench.store.db import make_engine, upgrade_to_head
from embench.store.ingest import ingest_result
from tests.store.factory import run_result

from .conftest import SmtpServer, Webhook

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "embedding_benchmark"
AIRFLOW_URL = "http://airflow.example:8080"
CONF = {"models": ["all-minilm-l6-v2"], "runtimes": ["onnx"], "variants": ["fp32"]}
EMAIL_FILE = Path("/tmp/alert-email.txt")  # the received e-mail, for the closing note


def run_dag(
    tmp_path: Path, smtp: SmtpServer, hook: Webhook, conf: dict[str, Any], *args: str
) -> dict:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for name in ("models.yaml", "prices.yaml"):
        (config_dir / name).write_text((REPO_ROOT / "config" / name).read_text())
    bench = yaml.safe_load((REPO_ROOT / "config" / "benchmark.yaml").read_text())
    bench["autotune"]["enabled"] = False
    bench["alerts"] = {
        "events": ["regression", "failure"],
        "email": {
            "to": ["oncall@example.com"],
            "from": "embench@example.com",
            "host": smtp.host,
            "port": smtp.port,
        },
        "webhook": {"url": hook.url},
        "airflow_url": AIRFLOW_URL,
    }
    (config_dir / "benchmark.yaml").write_text(yaml.safe_dump(bench, sort_keys=False))
    db_url = f"sqlite:///{tmp_path / 'results.db'}"
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    for night in range(7):  # the history: steady nights, then the night before tonight low
        ingest_result(engine, run_result(night, qps=100.0 + (night % 3), repetition=0))
    ingest_result(engine, run_result(7, qps=80.0, repetition=0))
    engine.dispose()
    env = {
        **os.environ,
        "EMBENCH_CONFIG_DIR": str(config_dir),
        "EMBENCH_DATA_DIR": str(tmp_path / "data"),
        "EMBENCH_DB_URL": db_url,
        "EMBENCH_AIRFLOW_HOME": str(tmp_path / "airflow"),
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.alerts.dag_run", json.dumps(conf), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and results, output[-5000:]
    return {**json.loads(results[-1].removeprefix("RESULT ")), "output": output}


def report_url(run_id: str) -> str:
    return f"{AIRFLOW_URL}/benchmarks/report?run={quote(f'{DAG_ID}/{run_id}', safe='')}"


def test_a_dag_run_that_regresses_alerts_by_email_and_webhook(
    tmp_path: Path, smtp_server: SmtpServer, webhook: Webhook
) -> None:
    run = run_dag(tmp_path, smtp_server, webhook, CONF)
    assert run["state"] == "success", run["output"][-5000:]
    run_id = run["run_id"]
    assert len(webhook.posts) == 1, run["output"][-6000:]
    [post] = webhook.posts
    report_file = Path(post["json"]["alert"]["report_path"])
    assert report_file.is_file()  # the report the alert links to was written
    assert report_file.parent.parent == tmp_path / "data" / "runs" / DAG_ID

    assert len(smtp_server.received) == 1, run["output"][-5000:]
    [mail] = smtp_server.received
    EMAIL_FILE.write_bytes(mail.raw)
    assert mail.rcpt_tos == ["oncall@example.com"]
    subject = mail.message["Subject"]
    assert subject.startswith(f"[embench] {DAG_ID} {run_id}: 2 regressions")
    assert "qps -20" in subject and "95% interval" in subject
    body = mail.body()
    text = post["json"]["text"]
    for where in (body, text):
        for scenario in ("closed-c1", "closed-c4"):
            assert f"onnxruntime fp32, {scenario}: qps 80.5 vs 101 (median of" in where
        assert where.count("change -20.") == 2 and where.count("(95% interval -") == 2
        assert report_url(run_id) in where and str(report_file) in where
    alert = post["json"]["alert"]
    assert alert["run_id"] == run_id and alert["report_url"] == report_url(run_id)
    assert {(r["scenario"], r["metric"]) for r in alert["regressions"]} == {
        ("closed-c1", "qps"),
        ("closed-c4", "qps"),
    }
    for finding in alert["regressions"]:
        assert finding["change_low"] < finding["relative_change"] < finding["change_high"] < 0


def test_a_dag_run_that_fails_alerts_its_failure_and_its_regressions(
    tmp_path: Path, smtp_server: SmtpServer, webhook: Webhook
) -> None:
    run = run_dag(tmp_path, smtp_server, webhook, CONF, "report-fails")
    assert run["state"] == "failed", run["output"][-5000:]
    run_id = run["run_id"]
    assert len(smtp_server.received) == 1, run["output"][-5000:]
    [mail] = smtp_server.received
    assert mail.message["Subject"].startswith(f"[embench] {DAG_ID} {run_id}: failed, 2 regressions")
    [post] = webhook.posts
    for where in (mail.body(), post["json"]["text"]):
        assert "The run failed (task_failure)" in where
        # the task, with the error the DAG's task failure callback recorded
        error = "report: EmbenchError: cannot write the report: No space left on device"
        assert error in re.sub(r"<[^>]+>", "", where), where
        assert where.count("change -20.") == 2 and report_url(run_id) in where
    assert post["json"]["alert"]["failed"] is True


def test_a_regression_fails_the_run_when_its_params_say_so(
    tmp_path: Path, smtp_server: SmtpServer, webhook: Webhook
) -> None:
    run = run_dag(tmp_path, smtp_server, webhook, {**CONF, "fail_on_regression": True})
    assert run["state"] == "failed", run["output"][-5000:]
    # the run's last task decided it, after the report was written and the verdicts stored
    assert "RegressionFound: 2 regression(s) in" in run["output"]
    [post] = webhook.posts
    assert post["json"]["alert"]["failed"] is True
    assert Path(post["json"]["alert"]["report_path"]).is_file()
