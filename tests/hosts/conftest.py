"""Fixtures of the host tests: the machine's Docker daemon, as the launchers reach it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from docker import APIClient

from embench.launch.site import docker_api

DOCKER_URL = "unix:///var/run/docker.sock"
BASE_IMAGE = "embench-base:bookworm"


@pytest.fixture(scope="module")
def cli() -> Iterator[APIClient]:
    """The daemon's API client; skips without a daemon or without the base image."""
    try:
        client = docker_api(DOCKER_URL)
        client.ping()
    except Exception as exc:  # any failure: no daemon to test against
        pytest.skip(f"no Docker daemon: {exc}")
    if not client.images(name=BASE_IMAGE):
        pytest.skip(f"no {BASE_IMAGE} (scripts/docker/build_base_image.sh)")
    yield client
    client.close()
