"""The test hosts of tests/testhost.py are real: an address of their own, an sshd that takes
only the pinned key and is checked against a pinned host key, a Docker daemon of their own
reached over SSH, published ports reachable from this machine, faults on demand, and nothing
left behind."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.testhost import NETNS_DIR, TestHost

pytestmark = pytest.mark.docker
IMAGE = "embench-base:bookworm"  # on the main daemon; has python3
INFO = "{{.ID}} {{.Name}} {{.DockerRootDir}}"


@pytest.fixture
def host(test_hosts) -> TestHost:
    return test_hosts(1)[0]


def have_image(image: str) -> None:
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        pytest.skip(f"no {image} on the main daemon (scripts/docker/build_base_image.sh)")


def main_daemon_info() -> str:
    done = subprocess.run(
        ["docker", "info", "--format", INFO], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        pytest.skip(f"no main Docker daemon: {done.stderr.strip()}")
    return done.stdout.strip()


def test_ssh_with_the_pinned_key_runs_inside_the_host(host: TestHost):
    assert host.address.startswith("10.231.") and host.gateway.startswith("10.231.")
    assert host.key_path.stat().st_mode & 0o777 == 0o600
    assert host.ssh("hostname").stdout.strip() == host.name
    assert host.address in host.ssh("hostname", "-I").stdout.split()
    addr = host.ssh("ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"inet {host.address}/24" in addr
    # the client's address as the host sees it is the main namespace's end of the veth
    assert host.ssh("echo", "$SSH_CLIENT").stdout.split()[0] == host.gateway
    # the host reaches nothing but this machine: no default route
    assert "default" not in host.ssh("ip", "route").stdout


def test_an_unknown_host_key_is_refused(host: TestHost, tmp_path: Path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    argv = host.ssh_argv("true")
    pinned = argv.index(f"UserKnownHostsFile={host.known_hosts_path}")
    argv[pinned] = f"UserKnownHostsFile={empty}"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 255
    assert "Host key verification failed" in done.stderr
    assert empty.read_text() == ""  # nothing learnt on first use


def test_a_key_that_is_not_authorized_is_refused(host: TestHost, tmp_path: Path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    argv = host.ssh_argv("true")
    argv[argv.index(str(host.key_path))] = str(other)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 255
    assert "Permission denied" in done.stderr


def test_docker_over_ssh_reaches_the_hosts_own_daemon(host: TestHost):
    main = main_daemon_info()
    # the docker CLI: `docker -H ssh://root@ADDRESS`, its `ssh` from host.bin_dir
    done = subprocess.run(
        ["docker", "-H", host.ssh_url, "info", "--format", INFO],
        env=host.ssh_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    over_ssh = done.stdout.strip()
    engine_id, name, root_dir = over_ssh.split()
    assert over_ssh == host.docker("info", "--format", INFO).stdout.strip()
    main_id, main_name, main_root = main.split()
    assert engine_id != main_id
    assert name == host.name != main_name
    assert root_dir == str(host.data_root) != main_root
    # a socket path in the URL: the remote CLI dials it (no need for the sshd's SetEnv)
    done = subprocess.run(
        ["docker", "-H", f"{host.ssh_url}{host.docker_socket}", "info", "--format", INFO],
        env=host.ssh_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == over_ssh


def test_docker_py_through_the_pipelines_ssh_tunnel(host: TestHost):
    """What the pipeline uses (embench.hosts.ssh.DockerTunnel): the host's Docker socket
    forwarded over the OpenSSH client, with the pinned key, to docker-py."""
    from docker import APIClient

    from embench.hosts.ssh import DockerTunnel, SshEndpoint

    endpoint = SshEndpoint(
        address=host.address,
        user=host.user,
        key_path=str(host.key_path),
        known_hosts=str(host.known_hosts_path),
        docker_socket=str(host.docker_socket),
    )
    with DockerTunnel(endpoint) as tunnel:
        client = APIClient(base_url=tunnel.docker_url, timeout=60)
        try:
            info = client.info()
        finally:
            client.close()
    assert info["Name"] == host.name
    assert info["DockerRootDir"] == str(host.data_root)


def test_a_published_port_on_the_host_is_reachable_from_here(host: TestHost):
    have_image(IMAGE)
    seconds = host.load_image(IMAGE)
    size_mb = int(host.docker("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout) / 1e6
    print(f"\nshipped {IMAGE} ({size_mb:.0f} MB) by docker save | ssh docker load: {seconds:.1f} s")
    assert IMAGE in host.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    started = time.monotonic()
    host.ssh(
        "docker", "run", "-d", "--name", "web", "-p", f"{host.address}:8000:8000",
        IMAGE, "python3", "-m", "http.server", "8000",
    )  # fmt: skip
    body = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host.address}:8000/", timeout=2) as response:
                body = response.read()
                break
        except OSError:
            time.sleep(0.2)
    print(f"run to first answer: {time.monotonic() - started:.1f} s")
    assert b"Directory listing" in body
    # on the host's daemon only
    assert "web" in host.docker("ps", "--format", "{{.Names}}").stdout.split()
    main_names = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.ID}}"], capture_output=True, text=True
    ).stdout.split()
    web_id = host.docker("inspect", "web", "--format", "{{.Id}}").stdout.strip()
    assert web_id[:12] not in main_names


def test_block_makes_the_host_unreachable_and_unblock_restores_it(host: TestHost):
    host.block()
    host.block()  # idempotent
    started = time.monotonic()
    done = host.ssh("true", check=False, connect_timeout=3, timeout=30)
    elapsed = time.monotonic() - started
    assert done.returncode == 255
    assert "timed out" in done.stderr
    assert 2.5 < elapsed < 15
    host.unblock()
    assert host.ssh("true", connect_timeout=3).returncode == 0


def test_kill_sshd_refuses_connections_and_start_sshd_brings_it_back(host: TestHost):
    host.kill_sshd()
    done = host.ssh("true", check=False, connect_timeout=3, timeout=30)
    assert done.returncode == 255
    assert "refused" in done.stderr
    host.start_sshd()
    assert host.ssh("true").returncode == 0


def test_destroy_leaves_nothing(test_hosts):
    have_image(IMAGE)
    host = test_hosts(1)[0]
    host.load_image(IMAGE)
    host.ssh("docker", "run", "-d", "--name", "sleeper", "-p", f"{host.address}:8001:8001",
             "--entrypoint", "sleep", IMAGE, "3600")  # fmt: skip
    sleeper = int(host.docker("inspect", "sleeper", "--format", "{{.State.Pid}}").stdout)
    pids = [int(p.read_text()) for p in (host.dockerd_pidfile, host.sshd_pidfile)]
    pids.append(sleeper)
    assert len(pids) == 3
    host.destroy()
    host.destroy()  # idempotent
    assert not (NETNS_DIR / host.name).exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert host.name not in netns
    assert not Path("/sys/class/net", host.veth).exists()
    # its address now goes nowhere, not out of this machine through the default route
    route = subprocess.run(["ip", "route", "get", host.address], capture_output=True, text=True)
    assert route.returncode != 0, route.stdout  # "No route to host"
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    leftovers = subprocess.run(
        ["pgrep", "-af", f"{host.run_dir}/"], capture_output=True, text=True
    ).stdout
    assert leftovers == ""
    assert not host.run_dir.exists()
    assert not host.work_dir.exists()
    assert str(host.run_dir) not in Path("/proc/self/mountinfo").read_text()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
