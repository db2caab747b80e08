"""The ssh provisioner against a real test host (its own sshd, pinned host key): the lock on
the host that keeps two runs apart, and what may break it."""

from __future__ import annotations

import pytest

from embench.config.schema import SshHostConfig, SshHostsConfig
from embench.errors import EmbenchError
from embench.hosts.ssh import SshProvisioner

pytestmark = pytest.mark.docker


def labels(deployment: str, run_id: str) -> dict[str, str]:
    return {"deployment": deployment, "dag_id": "embedding_benchmark", "run_id": run_id}


@pytest.fixture
def host_config(test_hosts):
    (host,) = test_hosts(1)
    config = SshHostsConfig(
        hosts=[
            SshHostConfig(
                name="th1",
                address=host.address,
                user=host.user,
                docker_socket=str(host.docker_socket),
            )
        ],
        key_path=str(host.key_path),
        known_hosts=str(host.known_hosts_path),
        lock_path=str(host.work_dir / "embench.lock"),
        connect_timeout_s=3,
    )
    return host, config


def test_the_lock_keeps_runs_apart_and_only_a_dead_run_of_this_deployment_loses_it(host_config):
    host, config = host_config
    lock = host.work_dir / "embench.lock"
    everyone_alive = SshProvisioner(config, lambda dag_id, run_id: True)
    everyone_dead = SshProvisioner(config, lambda dag_id, run_id: False)

    taken = everyone_alive.acquire(labels("A", "manual__1"))
    assert taken.lock == str(lock) and lock.is_dir()
    assert taken.ssh and taken.ssh["host_key_policy"] == "pinned"
    assert everyone_alive.acquire(labels("A", "manual__1")).name == "th1"  # a retried setup

    with pytest.raises(
        EmbenchError, match=r"busy: th1 \(held by A embedding_benchmark manual__1\)"
    ):
        everyone_alive.acquire(labels("A", "manual__2"))
    # Another deployment cannot judge A's runs: busy, however dead they look from there.
    with pytest.raises(EmbenchError, match="busy: th1"):
        everyone_dead.acquire(labels("B", "manual__9"))
    # A's own next run, whose Airflow says manual__1 is gone, breaks the lock and takes it.
    again = everyone_dead.acquire(labels("A", "manual__3"))
    assert '"run_id": "manual__3"' in (lock / "holder").read_text()

    everyone_dead.release(again)
    assert not lock.exists()


def test_release_of_an_unreachable_host_does_not_raise(host_config):
    host, config = host_config
    provisioner = SshProvisioner(config, lambda dag_id, run_id: False)
    taken = provisioner.acquire(labels("A", "manual__1"))
    host.block()
    provisioner.release(taken)  # logged; the next run of A breaks the lock
    host.unblock()
    assert (host.work_dir / "embench.lock").exists()


def test_unpinned_hosts_and_empty_lists_are_refused_before_connecting(host_config, tmp_path):
    _, config = host_config
    unpinned = config.model_copy(update={"known_hosts": str(tmp_path / "absent")})
    with pytest.raises(EmbenchError, match="host keys are pinned but the known_hosts file"):
        SshProvisioner(unpinned).acquire(labels("A", "manual__1"))
    with pytest.raises(EmbenchError, match="lists no host"):
        SshProvisioner(config.model_copy(update={"hosts": []}))
