"""Host calibration in the pipeline: the probe's output read (or refused, saying why), drift
and its note, the process site pinning the probe to the server's cpuset, and a benchmark on
the real docker site whose result carries the probe of the server's own container, run
before and after the client, and stored with the run; a probe that breaks leaves a note and
a passing benchmark."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from client.result import HostProbe, ProbeScores, load_result, probe_drift
from embench import steps
from embench.config import AppConfig, load_config
from embench.errors import EmbenchError
from embench.launch.handle import ServerHandle
from embench.launch.host_probe import (
    DRIFT_BOUND,
    attach_host_probe,
    format_cpuset,
    host_probe,
    parse_probe,
    probe_or_note,
)
from embench.launch.process_site import ProcessSite
from tests.pipeline.conftest import write_short_config

ONE_CPU = min(os.sched_getaffinity(0))
AT = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def scores(compute: float, memory: float, loop: float) -> ProbeScores:
    return ProbeScores(
        at=AT, compute_gflops=compute, memory_gb_per_s=memory, single_thread_score=loop, seconds=1
    )


def config_with(directory: Path, cpuset: str | None) -> AppConfig:
    """The shipped config, scenarios shortened, the server on `cpuset`."""
    write_short_config(directory)
    path = directory / "benchmark.yaml"
    bench = yaml.safe_load(path.read_text())
    bench["server"]["limits"]["cpuset"] = cpuset
    path.write_text(yaml.safe_dump(bench, sort_keys=False))
    return load_config(directory)


# ------------------------------------------------------------------- reading the probe


def test_a_probe_that_fails_or_prints_nonsense_is_refused_saying_why():
    missing = "Traceback ...\n/opt/venv/bin/python3: No module named server.probe\n"
    with pytest.raises(EmbenchError, match=r"status 1: .*No module named server.probe.*rebuild"):
        parse_probe(1, "", missing)
    with pytest.raises(EmbenchError, match="status 137: no output"):
        parse_probe(137, "", "")
    with pytest.raises(EmbenchError, match="printed no valid scores"):
        parse_probe(0, "not json", "")
    zero = '{"at": "2026-12-01T02:00:00+00:00", "compute_gflops": 0, "memory_gb_per_s": 1, '
    zero += '"single_thread_score": 1, "seconds": 1}'
    with pytest.raises(EmbenchError, match="printed no valid scores"):
        parse_probe(0, zero, "")  # a zero score would divide the drift by zero
    assert parse_probe(0, "log line\n" + zero.replace(": 0,", ": 5.5,"), "").compute_gflops == 5.5


def test_drift_is_the_largest_change_of_any_score_and_past_the_bound_it_is_noted():
    before = scores(100.0, 10.0, 1e6)
    notes: list[str] = []
    small = host_probe("0-1", before, scores(95.0, 10.5, 0.97e6), notes)
    assert small.drift == pytest.approx(0.05) and notes == []
    large = host_probe("0-1", before, scores(101.0, 10.0, 0.88e6), notes)
    assert large.drift == pytest.approx(0.12) and large.drift > DRIFT_BOUND
    assert notes == [
        "the host drifted during the run: its probe after the scenarios differs from the one "
        "before by up to 12.0% (bound 10%): compute_gflops +1.0%, memory_gb_per_s +0.0%, "
        "single_thread_score -12.0%"
    ]
    # half a probe: no drift, nothing to say about it
    assert host_probe(None, before, None, notes).drift is None and len(notes) == 1
    assert probe_drift(None, before) is None


def test_a_failing_probe_is_a_note_not_an_error():
    def broken() -> ProbeScores:
        raise EmbenchError("the host probe exited with status 1: boom")

    notes: list[str] = []
    assert probe_or_note(broken, "after", notes) is None
    assert notes == [
        "host probe after the scenarios failed: the host probe exited with status 1: boom"
    ]


def test_cpusets_are_written_compactly():
    assert format_cpuset({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpuset({3}) == "3"


def test_a_document_the_pipeline_cannot_read_is_left_as_the_client_wrote_it(tmp_path):
    out = tmp_path / "result.json"
    out.write_text('{"schema_version": "9.0"}')
    attach_host_probe(out, HostProbe(cpuset=None, before=None, after=None, drift=None), ["x"])
    assert out.read_text() == '{"schema_version": "9.0"}'


# ------------------------------------------------------------------------ process site


def test_the_process_site_pins_the_probe_to_the_servers_cpuset(tmp_path):
    handle = ServerHandle(launcher="process", url="http://127.0.0.1:1", name="pid 1", pid=1)
    pinned = ProcessSite(config_with(tmp_path / "pinned", str(ONE_CPU)))
    assert pinned.server_cpuset(handle) == str(ONE_CPU)
    assert pinned.probe_host(handle).cpus == 1
    unpinned = ProcessSite(config_with(tmp_path / "unpinned", None))
    assert unpinned.server_cpuset(handle) is None
    assert unpinned.probe_host(handle).cpus == len(os.sched_getaffinity(0))


# ------------------------------------------------------------------------- docker site


@pytest.fixture
def docker_site_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppConfig:
    """A short config whose server runs on one CPU; data (and the SQLite store) in tmp."""
    from embench.launch.site import docker_api

    try:
        cli = docker_api("unix:///var/run/docker.sock")
        cli.ping()
    except Exception as exc:  # any failure: no daemon to test against
        pytest.skip(f"no Docker daemon: {exc}")
    config = config_with(tmp_path / "config", str(ONE_CPU))
    for image in (config.benchmark.images.server_onnx, config.benchmark.images.client):
        if not cli.images(name=image):
            pytest.skip(f"no {image} (make images)")
    cli.close()
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EMBENCH_DB_URL", raising=False)
    return config


@pytest.mark.docker
@pytest.mark.slow
def test_a_docker_benchmark_carries_the_probe_of_the_servers_container(
    docker_site_config: AppConfig, prepared_minilm: dict, monkeypatch: pytest.MonkeyPatch
):
    config = docker_site_config
    ctx = steps.RunContext("embench_test_host_probe", f"manual__{uuid.uuid4().hex[:10]}")
    params = {"models": ["all-minilm-l6-v2"], "launcher": "docker", "provisioner": "local"}
    provisioned = steps.provision_host(params, 0, ctx, config, lambda dag_id, run_id: True)
    fp32 = prepared_minilm["fp32"]
    prepared = {
        "model": "all-minilm-l6-v2",
        "variant": "fp32",
        "runtime": "onnx",
        "repetition": 1,
        "scenarios": ["closed-c1"],
        "model_dir": str(fp32.directory),
        "manifest_sha256": fp32.manifest_sha256,
    }
    server = steps.start_server(prepared, provisioned, ctx, config)
    try:
        path = steps.run_benchmark(prepared, provisioned, server, ctx, config, timeout_s=300)
        result = load_result(path)
        probe = result.host_probe
        assert probe is not None and probe.before is not None and probe.after is not None
        # in the server's container: its cpuset, not this worker's two CPUs
        assert probe.cpuset == str(ONE_CPU)
        assert probe.before.cpus == probe.after.cpus == 1
        # before the client started, after it finished
        (scenario,) = result.scenarios
        assert probe.before.at < scenario.started_at < scenario.finished_at < probe.after.at
        assert probe.drift == pytest.approx(probe_drift(probe.before, probe.after))
        assert all("host probe" not in note for note in result.notes)
        # stored with the run (its document is the result less its scenarios)
        from embench.store.db import make_engine, session_scope
        from embench.store.models import Run

        stored = steps.store_result(path, config)
        engine = make_engine()
        with session_scope(engine) as session:
            document = session.scalar(sa.select(Run.document).where(Run.id == stored["run_pk"]))
        engine.dispose()
        assert HostProbe.model_validate(document["host_probe"]) == probe

        # A probe that breaks after the scenarios (here: a command that fails on its second
        # run in that container) leaves the first probe, a note and a passing benchmark.
        import embench.launch.site as site_module

        second_fails = "if [ -e /tmp/probed ]; then echo probe broke >&2; exit 3; fi; "
        second_fails += "touch /tmp/probed; exec python3 -m server.probe"
        monkeypatch.setattr(site_module, "PROBE_COMMAND", ["sh", "-c", second_fails])
        again = replace(ctx, map_index=1)  # its own work dir
        broken = load_result(
            steps.run_benchmark(prepared, provisioned, server, again, config, timeout_s=300)
        )
        assert broken.status == "complete" and len(broken.scenarios) == 1
        assert broken.host_probe is not None and broken.host_probe.before is not None
        assert broken.host_probe.after is None and broken.host_probe.drift is None
        assert (
            "host probe after the scenarios failed: the host probe exited with status 3: "
            "probe broke" in broken.notes
        )
    finally:
        steps.stop_server(server, provisioned, ctx, config)
        steps.release_host(provisioned, ctx, config)
