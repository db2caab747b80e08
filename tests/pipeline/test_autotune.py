"""The tune_server step for real: the MiniLM ONNX fp32 server under the process launcher,
tuned over a two-candidate space with short measurements by the real load client; the
second time the cache answers without starting any server; start_server and the result's
labels carry what was chosen."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from embench import steps
from embench.config import load_config
from embench.hosts import Host
from embench.launch.handle import ServerHandle
from embench.launch.process_site import ProcessSite
from embench.launch.site import open_site as open_site_for
from embench.prepare import prepare_model
from embench.report import TUNING_LABEL
from embench.tuning import cache_path
from tests.conftest import DEFAULT_MODEL
from tests.pipeline.conftest import write_short_config

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def minilm_fp32(app_config, model_cache):
    (prepared,) = prepare_model(app_config, DEFAULT_MODEL, ["fp32"], cache_root=model_cache)
    return prepared


def tuning_config(directory: Path):
    """The short pipeline config, tuning on: the default layout (2 workers x 1 thread) against
    1 x 2 only, one interleaved confirmation round, short measurements."""
    write_short_config(directory)
    path = directory / "benchmark.yaml"
    bench = yaml.safe_load(path.read_text())
    bench["autotune"] = {
        "enabled": True,
        "layouts": ["1x2"],
        "inter_op_threads": [],
        "spinning": [],
        "graph_optimization_level": [],
        "max_batch_tokens": [],
        "measure_s": 1.5,
        "warmup_s": 0.5,
        "concurrency": 4,
        "rounds": 1,
    }
    path.write_text(yaml.safe_dump(bench, sort_keys=False))
    return load_config(directory)


def test_tune_server_measures_two_candidates_then_reuses_its_cache(
    tmp_path, monkeypatch, minilm_fp32
):
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))
    config = tuning_config(tmp_path / "config")
    assert config.benchmark.server.settings()["workers"] == 2
    provisioned = {
        "host": Host("local", "here", f"unix://{tmp_path}/no.sock", "127.0.0.1").to_dict(),
        "launcher": "process",
        "docker_network": None,
    }
    ctx = steps.RunContext("embench_test_autotune", f"manual__{uuid.uuid4().hex[:10]}")
    prepared = {
        "model": DEFAULT_MODEL,
        "runtime": "onnx",
        "variant": "fp32",
        "repetition": 1,
        "scenarios": ["closed-c1"],
        "model_dir": str(minilm_fp32.directory),
        "manifest_sha256": minilm_fp32.manifest_sha256,
    }
    params = {"models": [DEFAULT_MODEL]}

    tuned = steps.tune_server(prepared, provisioned, params, ctx, config)
    record = tuned["tuning"]
    assert record["cache_hit"] is False
    candidates = record["candidates"]
    assert [c["settings"]["workers"] for c in candidates] == [2, 1]  # default first, then 1x2
    assert all(c["qps"] > 10 and c["p50_ms"] > 0 and c["error"] is None for c in candidates)
    assert record["default_settings"] == config.benchmark.server.settings()
    assert tuned["server_settings"] == record["settings"]
    if record["best_found"] == record["default_settings"]:
        assert record["servers_started"] == 2 and record["rounds"] == []
    else:  # one interleaved round: default, then best
        assert record["servers_started"] == 4 and len(record["rounds"]) == 1
        pair = record["rounds"][0]
        assert record["best_ratio"] == pytest.approx(pair["best"] / pair["default"], rel=1e-3)
    assert record["kept_default"] is (record["settings"] == record["default_settings"])
    if record["kept_default"]:
        assert record["ratio"] == 1.0 and record["tuned_qps"] == record["default_qps"]
    else:  # it won its round by more than the margin
        assert record["ratio"] == record["best_ratio"] > 1 + config.benchmark.autotune.margin
    assert cache_path(record["cache_key"]).is_file()
    print(
        f"autotune: default {record['default_qps']} QPS, tuned {record['tuned_qps']} QPS, "
        f"ratio {record['ratio']}, chose {record['changed'] or 'the default'}, "
        f"{record['servers_started']} servers in {record['seconds']} s"
    )

    # The second time nothing is measured: no server may start.
    def no_server(*args, **kwargs):
        raise AssertionError("a cached tuning started a server")

    monkeypatch.setattr(ProcessSite, "start_server", no_server)
    again = steps.tune_server(prepared, provisioned, params, ctx, config)
    assert again["tuning"]["cache_hit"] is True
    assert again["server_settings"] == tuned["server_settings"]
    assert again["tuning"]["candidates"] == candidates
    monkeypatch.undo()
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))

    # The `autotune` param turns it off: benchmark.yaml's settings, no record.
    off = steps.tune_server(prepared, provisioned, {**params, "autotune": False}, ctx, config)
    assert off["tuning"] is None
    assert off["server_settings"] == config.benchmark.server.settings()

    # The benchmark's server runs with the chosen settings, and its result is labelled.
    server = steps.start_server(tuned, provisioned, ctx, config)
    handle = ServerHandle.from_dict(server)
    try:
        with urllib.request.urlopen(f"{handle.url}/info", timeout=10) as response:
            info = json.loads(response.read())
        assert info["workers"] == tuned["server_settings"]["workers"]
        assert info["threads"] == tuned["server_settings"]["threads"]
        scenarios = steps.write_run_scenarios(tuned, ctx, config, handle)
        labels = json.loads(scenarios.read_text())["metadata"]["labels"]
        assert json.loads(labels[TUNING_LABEL])["settings"] == tuned["server_settings"]
    finally:
        steps.stop_server(server, provisioned, ctx, config)


@pytest.mark.docker
def test_tune_server_on_the_docker_launcher_then_reuses_its_cache(
    tmp_path, monkeypatch, minilm_fp32
):
    """The nightly's path: the fingerprint from the client's container, servers in
    containers, the server image's ID in the cache key."""
    from embench.launch.site import DockerSite, docker_api

    try:
        cli = docker_api("unix:///var/run/docker.sock")
        cli.ping()
    except Exception as exc:  # any failure: no daemon to test against
        pytest.skip(f"no Docker daemon: {exc}")
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EMBENCH_DB_URL", raising=False)
    config = tuning_config(tmp_path / "config")
    for image in (config.benchmark.images.server_onnx, config.benchmark.images.client):
        if not cli.images(name=image):
            pytest.skip(f"no {image} (make images)")
    image_id = cli.inspect_image(config.benchmark.images.server_onnx)["Id"]
    cli.close()
    ctx = steps.RunContext("embench_test_autotune", f"manual__{uuid.uuid4().hex[:10]}")
    params = {"models": [DEFAULT_MODEL], "launcher": "docker", "provisioner": "local"}
    provisioned = steps.provision_host(params, 0, ctx, config, lambda dag_id, run_id: True)
    prepared = {
        "model": DEFAULT_MODEL,
        "runtime": "onnx",
        "variant": "fp32",
        "repetition": 1,
        "scenarios": ["closed-c1"],
        "model_dir": str(minilm_fp32.directory),
        "manifest_sha256": minilm_fp32.manifest_sha256,
    }
    try:
        tuned = steps.tune_server(prepared, provisioned, params, ctx, config)
        record = tuned["tuning"]
        assert record["cache_hit"] is False
        assert [c["settings"]["workers"] for c in record["candidates"]] == [2, 1]
        assert all(c["qps"] > 10 and c["error"] is None for c in record["candidates"])
        with open_site_for(provisioned, config) as site:
            assert site.server_build(prepared).endswith(image_id)
        print(
            f"autotune (docker): default {record['default_qps']} QPS, tuned "
            f"{record['tuned_qps']} QPS, chose {record['changed'] or 'the default'}"
        )

        def no_server(*args, **kwargs):
            raise AssertionError("a cached tuning started a server")

        monkeypatch.setattr(DockerSite, "start_server", no_server)
        again = steps.tune_server(prepared, provisioned, params, ctx, config)
        assert again["tuning"]["cache_hit"] is True
        assert again["server_settings"] == tuned["server_settings"]
    finally:
        steps.release_host(provisioned, ctx, config)
