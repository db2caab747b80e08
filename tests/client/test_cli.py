"""`python -m client` as a process: clear errors, readiness wait, scenario file, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from client.result import load_result

from .conftest import REPO, run_cli, wait_for_file


def test_unreachable_server_is_a_clear_error_after_a_bounded_wait(free_port, tmp_path):
    started = time.monotonic()
    proc = run_cli(
        [
            "run",
            "--url",
            f"http://127.0.0.1:{free_port}",
            "--scenarios",
            "mode=closed,concurrency=1",
            "--out",
            str(tmp_path / "r.json"),
            "--wait-timeout",
            "1",
            "--progress",
            "plain",
        ]
    )
    assert proc.returncode == 3, proc.stderr
    assert "not ready after 1 s" in proc.stderr and "cannot connect" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 15
    assert not (tmp_path / "r.json").exists()


def test_invalid_scenario_parameters_are_named(tmp_path):
    out = str(tmp_path / "r.json")
    url = "http://127.0.0.1:9"
    proc = run_cli(["run", "--url", url, "--out", out, "--scenarios", "mode=closed,concurrency=0"])
    assert proc.returncode == 2
    assert "invalid scenario 'closed-c0-short': concurrency:" in proc.stderr
    assert "Traceback" not in proc.stderr

    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"scenarios": [{"name": "x", "mode": "open", "rat": 5}]}))
    proc = run_cli(["run", "--url", url, "--out", out, "--scenario-file", str(bad)])
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "scenarios.0" in proc.stderr and "'rate'" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_cli(["run", "--url", url, "--out", out, "--scenarios", "mode=closed,concurrency=1",
                    "--tolerance", "2"])  # fmt: skip
    assert proc.returncode == 2 and "tolerance" in proc.stderr


def test_scenario_file_and_sweep_with_a_readiness_wait(fake_server, tmp_path):
    url = fake_server.url(delay="fixed:1", ready_after=1.0)
    scenario_file = tmp_path / "s.json"
    scenario_file.write_text(
        json.dumps(
            {
                "scenarios": [
                    {
                        "name": "from-file",
                        "mode": "open",
                        "rate": 50,
                        "min_requests": 1,
                        "min_duration_s": 0.3,
                    },
                ],
                "warmup": {"requests": 2, "duration_s": 0.1},
                "stability": {
                    "window_s": 0.1,
                    "window_requests": 10,
                    "windows": 2,
                    "tolerance": 0.5,
                },
                "metadata": {"model": "m", "labels": {"night": "1"}},
            }
        )
    )
    out = tmp_path / "r.json"
    proc = run_cli(
        [
            "run",
            "--url",
            url,
            "--out",
            str(out),
            "--scenario-file",
            str(scenario_file),
            "--scenarios",
            "mode=closed,concurrency=1/2,min_requests=1,min_duration_s=0.3",
            "--wait-timeout",
            "10",
            "--progress",
            "plain",
            "--label",
            "extra=yes",
            "--window-requests",
            "5",
            "--no-extend-until-stable",
            "--schedule-lag-limit",
            "250",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("scenario ")]
    assert len(lines) == 3  # one line per scenario in a non-interactive log
    result = load_result(out)
    assert result.status == "complete"
    assert [s.name for s in result.scenarios] == ["from-file", "closed-c1-short", "closed-c2-short"]
    assert result.metadata.model == "m" and result.metadata.variant == "fp32"  # label, /info
    assert result.metadata.labels == {"night": "1", "extra": "yes"}
    assert result.warmup.requests == 2 and result.stability.window_s == 0.1
    assert result.stability.window_requests == 5 and not result.stability.extend_until_stable
    assert result.client.options.schedule_lag_limit_ms == 250


def test_ctrl_c_writes_partial_results_marked_incomplete(fake_server, tmp_path):
    url = fake_server.url(delay="fixed:2")
    out = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client",
            "run",
            "--url",
            url,
            "--out",
            str(out),
            "--scenarios",
            "name=first,mode=closed,concurrency=2,min_requests=1,min_duration_s=0.5",
            "name=second,mode=open,rate=100,min_requests=1,min_duration_s=30,max_duration_s=30",
            "--warmup-requests",
            "0",
            "--warmup-duration",
            "0",
            "--window",
            "0.5",
            "--window-requests",
            "10",
            "--progress",
            "plain",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        # the first scenario's result is on disk as soon as it ends
        deadline = time.monotonic() + 20
        wait_for_file(out)
        while not load_result(out).scenarios:
            assert time.monotonic() < deadline, "first scenario never written"
            time.sleep(0.1)
        assert load_result(out).status == "incomplete"
        time.sleep(1.0)  # into the second scenario
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            raise AssertionError(f"no exit 15 s after SIGINT; stderr:\n{stderr}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    result = load_result(out)
    assert result.status == "incomplete" and "interrupted" in (result.status_reason or "")
    assert not result.valid
    first, second = result.scenarios
    assert first.status == "complete" and first.valid
    assert second.status == "incomplete" and second.stop_reason == "interrupted"
    assert not second.valid and "interrupted" in [f.code for f in second.flags]
    assert second.requests_ok > 20 and 0.5 < second.duration_s < 10


def test_schema_command_prints_the_json_schema():
    proc = run_cli(["schema"])
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert "ScenarioResult" in schema["$defs"] and "schema_version" in schema["properties"]
