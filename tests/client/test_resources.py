"""Resource samplers: a busy container through the Docker stats API, a process with psutil."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from client.resources import ClientCpu, DockerSampler, ProcessSampler, SamplerError
from client.target import metrics_delta, parse_prometheus

BASE_IMAGE = "embench-base:bookworm"


def _docker_ready() -> bool:
    try:
        out = subprocess.run(
            ["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


@pytest.mark.docker
def test_docker_sampler_reads_cpu_and_memory_of_a_busy_container():
    if not _docker_ready():
        pytest.skip(f"no Docker engine or no {BASE_IMAGE} image")
    name = f"embench-client-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, BASE_IMAGE, "sh", "-c",
         "while :; do :; done"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        sampler = DockerSampler(name)
        time.sleep(0.3)
        sample = sampler.sample()
        assert sample.rss_bytes is not None and sample.rss_bytes > 0
        assert sample.cpu_pct is not None and 50 < sample.cpu_pct < 150  # one busy core
        desc = sampler.describe()
        assert desc["image"] == BASE_IMAGE and desc["image_digest"].startswith("sha256:")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=30)


def test_docker_sampler_names_a_missing_container():
    with pytest.raises(SamplerError, match="no-such-container"):
        DockerSampler("no-such-container", docker_url="unix:///nonexistent.sock", timeout_s=1)


def test_process_sampler_sees_a_busy_child():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        sampler = ProcessSampler(busy.pid)
        time.sleep(0.5)
        sample = sampler.sample()
        assert sample.cpu_pct is not None and sample.cpu_pct > 40
        assert sample.rss_bytes is not None and sample.rss_bytes > 1_000_000
    finally:
        busy.kill()
        busy.wait()
    with pytest.raises(SamplerError):
        ProcessSampler(busy.pid)  # gone


def test_client_cpu_is_percent_of_one_core():
    cpu = ClientCpu()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    assert 40 < cpu.sample() <= 110


def test_prometheus_parsing_and_counter_deltas():
    before = parse_prometheus('# HELP x\nreq_total{code="200"} 5\nqueue_depth 3\n')
    after = parse_prometheus(
        'req_total{code="200"} 12\nreq_total{code="429"} 2\nqueue_depth 1\nnew_gauge 4\n'
    )
    assert metrics_delta(before, after) == {
        "queue_depth": -2.0,
        'req_total{code="200"}': 7.0,
        'req_total{code="429"}': 2.0,  # a counter first seen after: counts from 0
    }
    assert metrics_delta(None, after) == {}
