"""An image built for another CPU architecture than the host's (an amd64 build for a Graviton
instance) is refused before it is shipped, naming both architectures and what to build; it
never reaches the host, where it would only fail at the server's start."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import tarfile

import pytest

from embench.config.schema import HostConfig
from embench.errors import EmbenchError
from embench.hosts import make_provisioner
from embench.launch.site import DockerSite
from tests.testhost import ssh_hosts_config

pytestmark = pytest.mark.docker

TAG = "embench-arch-test:arm64"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def load_foreign_image(tag: str, architecture: str) -> None:
    """`docker load` an image whose config says `architecture` (one empty layer): a build
    for another machine, as the worker's daemon would hold it."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w"):
        pass
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": ["/nothing"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "tests/hosts/test_image_architecture.py"}],
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        _add(tar, "layer/layer.tar", layer_bytes)
        _add(tar, config_name, config)
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    subprocess.run(["docker", "load"], input=archive.getvalue(), check=True, capture_output=True)


def test_an_image_of_another_architecture_is_refused_before_shipping(test_hosts, app_config):
    (host,) = test_hosts(1)
    load_foreign_image(TAG, "arm64")
    try:
        built_for = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Architecture}}", TAG],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert built_for == "arm64"
        images = app_config.benchmark.images.model_copy(update={"client": TAG})
        bench = app_config.benchmark.model_copy(update={"images": images})
        config = dataclasses.replace(app_config, benchmark=bench)
        host_config = HostConfig.model_validate(ssh_hosts_config([host]))
        provisioner = make_provisioner(host_config, "ssh")
        target = provisioner.host(host_config.ssh.hosts[0])  # type: ignore[attr-defined]
        with DockerSite(target, config) as site, pytest.raises(EmbenchError) as refused:
            site.ship({"runtime": "external", "variant": "x", "model": "m"})
        message = str(refused.value)
        host_arch = host.docker("version", "-f", "{{.Server.Arch}}").stdout.strip()
        assert message.startswith(
            f"the image {TAG!r} is built for arm64, but host th1 (its instance type) runs "
            f"{host_arch}: no {host_arch} build of it is on this worker."
        ), message
        assert f"--platform linux/{host_arch}" in message
        # nothing was sent to the host
        listed = host.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert TAG not in listed
    finally:
        subprocess.run(["docker", "rmi", "-f", TAG], capture_output=True, check=False)
