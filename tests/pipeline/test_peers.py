"""Peer servers as targets: an external server (one the user runs: here, our own server
started apart, or a server that returns wrong vectors) and infinity-emb in its own image, each
checked through its API against the PyTorch reference before it is measured."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from client.result import load_result
from embench import steps
from embench.config import AppConfig, load_config
from embench.errors import ConfigError, ParityError
from embench.launch.process_site import ProcessSite
from embench.served_parity import SERVED_PARITY_LABEL, check_served_parity, parity_from_labels
from tests.pipeline.conftest import write_short_config

MODEL = "all-minilm-l6-v2"


def config_with_external(directory: Path, external: list[dict]) -> AppConfig:
    write_short_config(directory)
    path = directory / "benchmark.yaml"
    bench = yaml.safe_load(path.read_text())
    bench["external"] = external
    path.write_text(yaml.safe_dump(bench, sort_keys=False))
    return load_config(directory)


def target_of(config: AppConfig, runtime: str, variant: str) -> dict:
    params = {"models": [MODEL], "runtimes": [runtime], "scenarios": ["closed-c1"]}
    (target,) = [t for t in steps.plan_targets(params, config) if t["variant"] == variant]
    return target


# ------------------------------------------------------------------------------ config


def test_an_external_server_must_name_a_known_model_and_a_unique_name(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"benchmark.yaml:\d+: external\[0\]\.model: unknown"):
        config_with_external(tmp_path / "a", [{"name": "x", "model": "nope", "url": "http://h"}])
    twice = [{"name": "x", "model": MODEL, "url": "http://h"}] * 2
    with pytest.raises(ConfigError, match="external server names must be unique; repeated: x"):
        config_with_external(tmp_path / "b", twice)
    with pytest.raises(ConfigError, match=r"external\[0\]\.url: string should match"):
        config_with_external(tmp_path / "c", [{"name": "x", "model": MODEL, "url": "h:80"}])


def test_external_servers_are_targets_of_their_model_whatever_the_variants_filter(
    tmp_path: Path,
):
    config = config_with_external(
        tmp_path, [{"name": "tei", "model": MODEL, "url": "http://10.0.0.1:8080"}]
    )
    params = {"models": [MODEL], "runtimes": [], "variants": ["int8"], "repetitions": 1}
    planned = [(t["runtime"], t["variant"]) for t in steps.plan_targets(params, config)]
    assert planned == [("onnx", "int8"), ("openvino", "int8"), ("external", "tei")]
    only = steps.plan_targets({**params, "runtimes": ["external"]}, config)
    assert [(t["runtime"], t["variant"]) for t in only] == [("external", "tei")]


# --------------------------------------------------------------------- external server


@pytest.fixture
def our_server_apart(app_config: AppConfig, prepared_minilm: dict, tmp_path: Path) -> Iterator:
    """Our server on the ONNX fp32 export, started apart: a server some user runs."""
    site = ProcessSite(app_config)
    fp32 = prepared_minilm["fp32"]
    prepared = {"runtime": "onnx", "variant": "fp32", "model_dir": str(fp32.directory)}
    handle = site.start_server(prepared, "apart", {}, tmp_path / "apart.log")
    yield handle
    site.stop_server(handle, None)


@pytest.mark.slow
def test_an_external_server_is_checked_measured_and_left_running(
    our_server_apart, model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EMBENCH_CACHE_DIR", str(model_cache))
    monkeypatch.delenv("EMBENCH_DB_URL", raising=False)
    external = {"name": "ours-apart", "model": MODEL, "url": our_server_apart.url}
    config = config_with_external(tmp_path / "config", [{**external, "request_model": "m"}])
    ctx = steps.RunContext("embench_test_peers", f"manual__{uuid.uuid4().hex[:10]}")
    params = {"models": [MODEL], "launcher": "process", "provisioner": "local"}
    provisioned = steps.provision_host(params, 0, ctx, config, lambda dag_id, run_id: True)
    try:
        prepared = steps.prepare_target(target_of(config, "external", "ours-apart"), config)
        # its entry: the tokenizer (for the client) and the reference, and no in-process gate
        entry = Path(prepared["model_dir"])
        assert (entry / "tokenizer.json").is_file() and (entry / "parity_reference.npy").is_file()
        assert prepared["parity_mean_cosine"] is None and not (entry / "model.onnx").exists()
        assert steps.ship_to_host(prepared, provisioned, config)["model"] == "local"
        server = steps.start_server(prepared, provisioned, ctx, config)
        assert server["launcher"] == "external" and server["url"] == our_server_apart.url
        path = steps.run_benchmark(prepared, provisioned, server, ctx, config, timeout_s=300)
        steps.stop_server(server, provisioned, ctx, config)
    finally:
        steps.release_host(provisioned, ctx, config)

    result = load_result(path)
    assert (result.metadata.runtime, result.metadata.variant) == ("external", "ours-apart")
    assert result.status == "complete" and result.scenarios[0].qps > 0
    # driven through the OpenAI API, with the configured "model" field
    assert result.metadata.endpoint == "/v1/embeddings"
    parity = parity_from_labels(result.metadata.labels)
    assert parity is not None and parity["passed"] and parity["mean_cosine"] > 0.9999
    assert any("not ours to probe" in note for note in result.notes)
    # nothing stopped the user's server
    assert ProcessSite(config).server_failure(our_server_apart) is None


class WrongVectors(BaseHTTPRequestHandler):
    """An OpenAI-compatible server of some other model: healthy, fast and wrong."""

    dim = 384

    def do_GET(self) -> None:
        self._send({"status": "ok"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        rng = np.random.default_rng(len(body["input"]))
        data = [
            {"object": "embedding", "index": i, "embedding": rng.normal(size=self.dim).tolist()}
            for i in range(len(body["input"]))
        ]
        self._send({"object": "list", "data": data})

    def _send(self, doc: dict) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def wrong_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), WrongVectors)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_server_that_returns_wrong_vectors_is_refused_before_it_is_measured(
    wrong_server: str, model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EMBENCH_CACHE_DIR", str(model_cache))
    config = config_with_external(
        tmp_path / "config", [{"name": "wrong", "model": MODEL, "url": wrong_server}]
    )
    ctx = steps.RunContext("embench_test_peers", f"manual__{uuid.uuid4().hex[:10]}")
    params = {"models": [MODEL], "launcher": "process", "provisioner": "local"}
    provisioned = steps.provision_host(params, 0, ctx, config, lambda dag_id, run_id: True)
    try:
        prepared = steps.prepare_target(target_of(config, "external", "wrong"), config)
        server = steps.start_server(prepared, provisioned, ctx, config)
        with pytest.raises(ParityError, match=r"failed the parity gate through its API.*mean"):
            steps.run_benchmark(prepared, provisioned, server, ctx, config, timeout_s=60)
    finally:
        steps.release_host(provisioned, ctx, config)
    assert not steps.result_path(ctx).exists()  # nothing measured, nothing to store
    WrongVectors.dim = 768  # another model's width: named as such
    try:
        with pytest.raises(ParityError, match=r"vectors of shape \(768,\).*\(384,\)"):
            check_served_parity(
                wrong_server, "openai", Path(prepared["model_dir"]), _gate(), "wrong"
            )
    finally:
        WrongVectors.dim = 384
    assert SERVED_PARITY_LABEL == "served_parity"


def _gate():
    from embench.prepare.variants import PARITY_GATES

    return PARITY_GATES["fp32"]


# ------------------------------------------------------------------------ infinity-emb


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> AppConfig:
    from embench.launch.site import docker_api

    try:
        cli = docker_api("unix:///var/run/docker.sock")
        cli.ping()
    except Exception as exc:  # any failure: no daemon to test against
        pytest.skip(f"no Docker daemon: {exc}")
    config = config_with_external(tmp_path / "config", [])
    for image in (config.benchmark.images.server_infinity, config.benchmark.images.client):
        if not cli.images(name=image):
            pytest.skip(f"no {image} (make images)")
    cli.close()
    monkeypatch.setenv("EMBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EMBENCH_CACHE_DIR", str(model_cache))
    monkeypatch.delenv("EMBENCH_DB_URL", raising=False)
    return config


@pytest.mark.docker
@pytest.mark.slow
def test_infinity_runs_in_its_image_passes_the_gate_with_mean_pooling_and_not_with_cls(
    docker_config: AppConfig,
):
    from embench.launch.docker_server import remove_container, start_server_container
    from embench.launch.site import docker_api

    config = docker_config
    ctx = steps.RunContext("embench_test_peers", f"manual__{uuid.uuid4().hex[:10]}")
    params = {"models": [MODEL], "launcher": "docker", "provisioner": "local"}
    provisioned = steps.provision_host(params, 0, ctx, config, lambda dag_id, run_id: True)
    try:
        prepared = steps.prepare_target(target_of(config, "infinity", "fp32"), config)
        server = steps.start_server(prepared, provisioned, ctx, config)
        assert server["image"] == config.benchmark.images.server_infinity
        try:
            path = steps.run_benchmark(prepared, provisioned, server, ctx, config, timeout_s=300)
        finally:
            steps.stop_server(server, provisioned, ctx, config)
        result = load_result(path)
        assert (result.metadata.runtime, result.metadata.variant) == ("infinity", "fp32")
        assert result.status == "complete" and result.scenarios[0].qps > 0
        assert result.metadata.endpoint == "/v1/embeddings"
        parity = parity_from_labels(result.metadata.labels)
        assert parity is not None and parity["mean_cosine"] > 0.9999
        # the host probe ran in infinity's container too
        assert result.host_probe is not None and result.host_probe.before is not None

        # infinity's own default pooling for this engine (CLS) returns other vectors
        cli = docker_api("unix:///var/run/docker.sock")
        name = f"embench-test-infinity-cls-{uuid.uuid4().hex[:8]}"
        handle = start_server_container(
            cli,
            image=config.benchmark.images.server_infinity,
            name=name,
            model_source=prepared["model_dir"],
            environment={"INFINITY_POOLING_METHOD": "cls"},
            labels={},
        )
        try:
            with pytest.raises(ParityError, match="failed the parity gate") as refused:
                check_served_parity(
                    handle.url, "openai", Path(prepared["model_dir"]), _gate(), "infinity cls"
                )
            mean = float(str(refused.value).split("mean cosine ")[1].split()[0])
            assert mean < 0.9
        finally:
            remove_container(cli, name)
            cli.close()
    finally:
        steps.release_host(provisioned, ctx, config)
