"""Test hosts: real machines in miniature for testing benchmark runs over SSH.

A test host is a network namespace `embench-th-<index>` joined to the main namespace by a veth
pair (main end `embth<index>` = 10.231.<index>.1/24, host end `eth0` = 10.231.<index>.2/24,
no default route: the host reaches this machine and nothing else), with

- its own sshd (Debian's openssh-server, `ip netns exec NAME /usr/sbin/sshd -f CONFIG`): its
  own ed25519 host key, root login by key only (a client key generated with ssh-keygen), and
  `SetEnv DOCKER_HOST=unix://<docker_socket>` so that `docker system dial-stdio` run over SSH
  reaches the host's own daemon;
- its own dockerd (`nsenter --net=/var/run/netns/NAME dockerd ...`: `ip netns exec` remounts
  /sys and dockerd then fails with "Devices cgroup isn't mounted"), with its own data root,
  exec root, socket, pid file, containerd (managed by that dockerd, in the namespace), docker0
  bridge and iptables rules (per namespace), and its containers under the cgroup
  `/embench-th-<index>` so that a sweep finds them even when their daemon is gone.

Paths that hold unix sockets (the daemon's socket, its exec root, pid files, sshd's config)
live under /run/embench-th/<name>/ (unix socket paths are limited to 108 bytes); keys, the
data root and logs live under the caller's work_dir.

Reaching a host's daemon over SSH (the host key is pinned: StrictHostKeyChecking=yes with
`known_hosts_path`, no trust on first use; nothing is read from or written to ~/.ssh):

- The OpenSSH client: `host.ssh("docker", "info")`, or by hand
  `ssh -i KEY -o UserKnownHostsFile=KNOWN_HOSTS -o StrictHostKeyChecking=yes -o BatchMode=yes
  root@ADDRESS docker info`. Large transfers go through this client
  (`docker save IMAGE | ssh ... docker load`, see `TestHost.load_image`).
- What the pipeline uses: an ssh tunnel of the daemon's socket (`ssh -L LOCAL.sock:
  <docker_socket>`, embench.hosts.ssh.DockerTunnel), with every ssh option explicit; docker-py
  then talks to `unix://LOCAL.sock`.
- The docker CLI (`docker -H ssh://root@ADDRESS ...`) runs the program `ssh` found on PATH as
  `ssh [-o ConnectTimeout=30 -T] -l root -- ADDRESS docker system dial-stdio` (seen with
  strace: CLI 28.2) and takes no ssh options from the caller (there is no DOCKER_SSH_OPTS;
  OpenSSH finds `~/.ssh/config` through the password database, not `$HOME`). What works:
  each host has `bin_dir` holding an executable `ssh` that runs `/usr/bin/ssh -F
  <ssh_config_path> "$@"`, where that config names the key, the pinned known_hosts,
  StrictHostKeyChecking yes, BatchMode yes and IdentitiesOnly yes for the host's address:

      subprocess.run(["docker", "-H", host.ssh_url, "info"], env=host.ssh_env())

  docker-py's own ssh transports need paramiko, which this project does not install.

`docker -H unix://<docker_socket>` (`TestHost.docker`) talks to the host's daemon directly,
for test assertions only.

Teardown (`TestHost.destroy`) is by pid file, then by whatever still runs in the namespace,
in the host's cgroup or with the host's run dir on its command line; `sweep_test_hosts()`
removes the hosts of sessions that were killed (their owner process is gone), never those of
a live session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "embench-th-"  # network namespaces, cgroups, containerd namespaces
VETH_PREFIX = "embth"  # main-namespace end of the veth pair (interface names: 15 bytes max)
RUN_ROOT = Path("/run/embench-th")
NETNS_DIR = Path("/var/run/netns")
SUBNET = "10.231"  # 10.231.<index>.0/24 per host; nothing outside 10.231.0.0/16
MAX_INDEX = 254
CGROUP_ROOT = Path("/sys/fs/cgroup")
SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
REQUIRED_TOOLS = (
    "ip", "nsenter", "unshare", "setsid", "mount", "umount", "iptables",
    "dockerd", "docker", "ssh", "ssh-keygen",
)  # fmt: skip
BLOCK_RULE = ("-i", "eth0", "-j", "DROP")  # raw PREROUTING: nothing arriving is even tracked


class TestHostError(RuntimeError):
    """A test host could not be created."""


def missing_requirements() -> list[str]:
    """What this machine lacks for test hosts (empty when they can be made)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root")
    missing += [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    return missing


def _run(
    argv: list[str], *, check: bool = True, timeout: float = 30.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise TestHostError(
            f"{' '.join(argv)}: exit status {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done


@dataclass(frozen=True)
class TestHost:
    """One test host; see the module docstring."""

    __test__ = False  # not a pytest test class

    name: str  # network namespace
    index: int
    address: str  # the host's IP, 10.231.<index>.2
    gateway: str  # the main namespace's end, 10.231.<index>.1
    veth: str  # main-namespace interface
    work_dir: Path
    run_dir: Path
    key_path: Path  # client private key (ed25519, 0600)
    known_hosts_path: Path  # pins this host's own host key for `address`
    ssh_config_path: Path  # key + known_hosts + strict checking for `address`
    bin_dir: Path  # holds an `ssh` that uses ssh_config_path: put it first on PATH
    docker_socket: Path  # the host's own dockerd
    data_root: Path
    exec_root: Path
    ssh_port: int = 22
    user: str = "root"

    @property
    def ssh_url(self) -> str:
        return f"ssh://{self.user}@{self.address}"

    @property
    def docker_url(self) -> str:
        """The host's daemon, directly (not over SSH)."""
        return f"unix://{self.docker_socket}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.name

    @property
    def dockerd_pidfile(self) -> Path:
        return self.run_dir / "dockerd.pid"

    @property
    def sshd_pidfile(self) -> Path:
        return self.run_dir / "sshd.pid"

    @property
    def sshd_config_path(self) -> Path:
        return self.run_dir / "sshd_config"

    @property
    def uts_path(self) -> Path:
        """The host's own UTS namespace (its hostname is its name), bound to a file."""
        return self.run_dir / "uts"

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.name}"

    def ssh_options(self, connect_timeout: int = 10) -> list[str]:
        return [
            "-i", str(self.key_path),
            "-o", f"UserKnownHostsFile={self.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "LogLevel=ERROR",
            "-p", str(self.ssh_port),
        ]  # fmt: skip

    def ssh_argv(self, *argv: str, connect_timeout: int = 10) -> list[str]:
        return [SSH, *self.ssh_options(connect_timeout), f"{self.user}@{self.address}", *argv]

    def ssh(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60.0,
        connect_timeout: int = 10,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the host through the OpenSSH client (remote shell syntax: the
        arguments are joined by spaces, as ssh does)."""
        return _run(
            self.ssh_argv(*argv, connect_timeout=connect_timeout),
            check=check,
            timeout=timeout,
            input=input,
        )

    def ssh_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment whose `ssh` reaches this host with the pinned key, for
        `docker -H ssh://...`."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    def docker(
        self, *argv: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against the host's own daemon, directly: for test assertions."""
        return _run(["docker", "-H", self.docker_url, *argv], check=check, timeout=timeout)

    def load_image(self, image: str, timeout: float = 600.0) -> float:
        """Ship an image from the main daemon to the host (`docker save | ssh docker load`);
        returns the seconds it took."""
        started = time.monotonic()
        with subprocess.Popen(
            ["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as save:
            load = subprocess.run(
                self.ssh_argv("docker", "load"),
                stdin=save.stdout,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            assert save.stdout is not None
            save.stdout.close()
            save_err = save.stderr.read().decode(errors="replace") if save.stderr else ""
            save_rc = save.wait(timeout=30)
        if save_rc != 0 or load.returncode != 0:
            raise TestHostError(
                f"shipping {image} to {self.name}: docker save exit {save_rc} {save_err.strip()}; "
                f"ssh docker load exit {load.returncode} {load.stderr.strip()}"
            )
        return time.monotonic() - started

    # faults

    def block(self) -> None:
        """Drop every packet arriving at the host: ssh (and anything else) times out."""
        if not self._has_block_rule():
            self.netns_exec("iptables", "-t", "raw", "-I", "PREROUTING", "1", *BLOCK_RULE)

    def unblock(self) -> None:
        while self._has_block_rule():
            self.netns_exec("iptables", "-t", "raw", "-D", "PREROUTING", *BLOCK_RULE)

    def _has_block_rule(self) -> bool:
        done = self.netns_exec(
            "iptables", "-t", "raw", "-C", "PREROUTING", *BLOCK_RULE, check=False
        )
        return done.returncode == 0

    def add_address(self, address: str) -> None:
        """Give the host a second address of its own /24 (an EC2 instance's private address
        that moto assigned): reachable at once, sshd included."""
        if not address.startswith(f"{SUBNET}.{self.index}."):
            raise TestHostError(f"{address} is not in {self.name}'s {SUBNET}.{self.index}.0/24")
        self.netns_exec("ip", "addr", "add", f"{address}/24", "dev", "eth0")

    def host_key_line(self, address: str) -> str:
        """A known_hosts line that pins this host's key for `address`."""
        _, key_type, key_b64 = self.known_hosts_path.read_text().split()[:3]
        return f"{address} {key_type} {key_b64}"

    def kill_sshd(self) -> None:
        """Kill the host's sshd: its listener and every open session (connections are then
        refused, not timed out)."""
        pids = set(self._sshd_pids())
        listener = _read_pid(self.sshd_pidfile)
        if listener is not None and _comm(listener) == "sshd":
            pids.add(listener)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            _wait_gone(pid, 5)
        self.sshd_pidfile.unlink(missing_ok=True)

    def start_sshd(self) -> None:
        """(Re)start the host's sshd, and wait until it accepts connections."""
        argv = [
            "ip", "netns", "exec", self.name, "nsenter", f"--uts={self.uts_path}",
            SSHD, "-f", str(self.sshd_config_path), "-E", str(self.work_dir / "sshd.log"),
        ]  # fmt: skip
        _run(argv)
        _wait_port(self.address, self.ssh_port, 15, what=f"sshd of {self.name}")

    def _sshd_pids(self) -> list[int]:
        return [pid for pid in _netns_pids(self.name) if _comm(pid) == "sshd"]

    def netns_exec(
        self, *argv: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on this machine inside the host's network namespace."""
        return _run(["nsenter", f"--net={self.netns_path}", *argv], check=check, timeout=timeout)

    # lifecycle

    def destroy(self) -> None:
        """Remove the host and everything it left: idempotent, best-effort, never raises."""
        try:
            if self.docker_socket.exists():
                _remove_all_containers(self.docker_url)
        except Exception as exc:
            log.warning("%s: removing containers: %s", self.name, exc)
        _teardown(self.name, self.index, self.run_dir, [self.work_dir])


def host_name(index: int) -> str:
    return f"{PREFIX}{index}"


def create_test_host(work_dir: Path, index: int) -> TestHost:
    """Create test host number `index` (1..254: 10.231.<index>.0/24) with its files under
    work_dir (created; removed by destroy()). Raises FileExistsError when that index is in
    use, TestHostError when something fails (what was made by then is removed)."""
    if not 1 <= index <= MAX_INDEX:
        raise ValueError(f"test host index {index} outside 1..{MAX_INDEX}")
    name = host_name(index)
    run_dir = RUN_ROOT / name
    work_dir = Path(work_dir).resolve()
    host = TestHost(
        name=name,
        index=index,
        address=f"{SUBNET}.{index}.2",
        gateway=f"{SUBNET}.{index}.1",
        veth=f"{VETH_PREFIX}{index}",
        work_dir=work_dir,
        run_dir=run_dir,
        key_path=work_dir / "client_key",
        known_hosts_path=work_dir / "known_hosts",
        ssh_config_path=work_dir / "ssh_config",
        bin_dir=work_dir / "bin",
        docker_socket=run_dir / "docker.sock",
        data_root=work_dir / "docker",
        exec_root=run_dir / "x",
    )
    # The namespace is the claim on the index: `ip netns add` fails when it exists.
    done = _run(["ip", "netns", "add", name], check=False)
    if done.returncode != 0:
        raise FileExistsError(f"network namespace {name}: {done.stderr.strip()}")
    if run_dir.exists() and _owner_alive(run_dir):  # its namespace deleted by someone
        _del_netns(name)
        raise FileExistsError(f"{run_dir}: test host {name} of a live session")
    try:
        if run_dir.exists():  # a leftover without its namespace, of a session now gone
            _teardown(name, index, run_dir, [])
            _run(["ip", "netns", "add", name], check=False)
        run_dir.mkdir(parents=True)
        owner = run_dir / "owner"
        owner.with_suffix(".tmp").write_text(_owner_stamp(os.getpid()))
        owner.with_suffix(".tmp").rename(owner)
        (run_dir / "work_dir").write_text(str(work_dir))
        work_dir.mkdir(parents=True, exist_ok=True)
        _make_network(host)
        host.uts_path.touch()
        _run(["unshare", f"--uts={host.uts_path}", "sh", "-c",
              f"echo {name} > /proc/sys/kernel/hostname"])  # fmt: skip
        _make_ssh_files(host)
        host.start_sshd()
        _start_dockerd(host)
        _check_chain(host)
    except BaseException:
        host.destroy()
        raise
    return host


def _make_network(host: TestHost) -> None:
    ns = ["ip", "-n", host.name]
    with contextlib.suppress(TestHostError):  # a leftover with this name
        _run(["ip", "link", "del", host.veth])
    _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
          "netns", host.name])  # fmt: skip
    _run(["ip", "addr", "add", f"{host.gateway}/24", "dev", host.veth])
    _run(["ip", "link", "set", host.veth, "up"])
    _run([*ns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
    _run([*ns, "link", "set", "eth0", "up"])
    _run([*ns, "link", "set", "lo", "up"])
    # An address of a host that is gone (or never was) fails here at once rather than going
    # to the default gateway: more specific /24 routes of live hosts win. Left in place.
    _run(["ip", "route", "replace", "unreachable", f"{SUBNET}.0.0/16"])


def _make_ssh_files(host: TestHost) -> None:
    w = host.work_dir
    host_key = w / "ssh_host_ed25519_key"
    for path, comment in ((host.key_path, "embench-test-client"), (host_key, host.name)):
        for stale in (path, path.with_name(path.name + ".pub")):
            stale.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
        path.chmod(0o600)
    (w / "authorized_keys").write_text(host.key_path.with_name("client_key.pub").read_text())
    key_type, key_b64 = host_key.with_name(host_key.name + ".pub").read_text().split()[:2]
    host_pattern = host.address if host.ssh_port == 22 else f"[{host.address}]:{host.ssh_port}"
    host.known_hosts_path.write_text(f"{host_pattern} {key_type} {key_b64}\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    host.sshd_config_path.write_text(
        "\n".join(
            [
                f"Port {host.ssh_port}",
                # Every address of the namespace (its own, and any add_address gives it).
                "ListenAddress 0.0.0.0",
                f"HostKey {host_key}",
                f"PidFile {host.sshd_pidfile}",
                f"AuthorizedKeysFile {w / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "UseDNS no",
                "MaxStartups 100",
                "MaxSessions 100",
                f"SetEnv DOCKER_HOST=unix://{host.docker_socket}",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    host.ssh_config_path.write_text(
        "\n".join(
            [
                f"Host {host.address}",
                f"  User {host.user}",
                f"  Port {host.ssh_port}",
                f"  IdentityFile {host.key_path}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {host.known_hosts_path}",
                "  StrictHostKeyChecking yes",
                "  BatchMode yes",
                "  LogLevel ERROR",
                "",
            ]
        )
    )
    host.bin_dir.mkdir(exist_ok=True)
    wrapper = host.bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {SSH} -F "{host.ssh_config_path}" "$@"\n')
    wrapper.chmod(0o755)


def _start_dockerd(host: TestHost) -> None:
    # dockerd reads /etc/docker (key.json: the engine ID) whatever --config-file says: it
    # runs in a mount namespace of its own (slave: it sees this machine's mounts, this machine
    # does not see its overlays) where a private directory is bound on /etc/docker.
    conf_dir = host.run_dir / "etc-docker"
    conf_dir.mkdir(exist_ok=True)
    config = conf_dir / "daemon.json"
    config.write_text("{}\n")
    for path in (host.data_root, host.exec_root):
        path.mkdir(parents=True, exist_ok=True)
    argv = [
        "setsid", "-f", "nsenter", f"--net={host.netns_path}",
        f"--uts={host.uts_path}",
        "unshare", "--mount", "--propagation", "slave",
        "sh", "-c", 'mount --bind "$0" /etc/docker && exec "$@"', str(conf_dir),
        "dockerd",
        "--config-file", str(config),
        "--data-root", str(host.data_root),
        "--exec-root", str(host.exec_root),
        "-H", host.docker_url,
        "--pidfile", str(host.dockerd_pidfile),
        "--cgroup-parent", host.cgroup_parent,
        "--containerd-namespace", host.name,
        "--containerd-plugins-namespace", f"{host.name}-plugins",
    ]  # fmt: skip
    log_path = host.work_dir / "dockerd.log"
    with open(log_path, "ab") as log_file:
        # setsid -f: detached, in its own session, reparented to init (no zombie, no Popen).
        subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            check=True,
            timeout=30,
        )
    deadline = time.monotonic() + 60
    last = ""
    while time.monotonic() < deadline:
        if host.docker_socket.exists():
            done = host.docker("info", "--format", "{{.ID}}", check=False, timeout=10)
            if done.returncode == 0:
                return
            last = done.stderr.strip()
        time.sleep(0.5)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
    raise TestHostError(
        f"dockerd of {host.name} did not answer on {host.docker_socket} within 60 s "
        f"({last}); {log_path} ends with:\n{tail}"
    )


def _check_chain(host: TestHost) -> None:
    """ssh with the pinned key reaches the host, and docker over ssh its own daemon."""
    fmt = "{{.ID}} {{.Name}} {{.DockerRootDir}}"
    done = host.ssh("docker", "info", "--format", f"'{fmt}'", timeout=30)
    own = host.docker("info", "--format", fmt).stdout.strip()
    if done.stdout.strip() != own or own.split()[-1] != str(host.data_root):
        raise TestHostError(
            f"{host.name}: docker over ssh answered {done.stdout.strip()!r}, not the host's "
            f"own daemon {own!r}"
        )


def _remove_all_containers(docker_url: str) -> None:
    ids = _run(["docker", "-H", docker_url, "ps", "-aq"], timeout=15).stdout.split()
    if ids:
        _run(["docker", "-H", docker_url, "rm", "-f", "-v", *ids], check=False, timeout=60)


# teardown and sweep


def _teardown(name: str, index: int, run_dir: Path, dirs: list[Path]) -> None:
    """Stop and remove everything of host `name`; best-effort, never raises."""
    steps = [
        ("stop dockerd", lambda: _stop_pidfile(run_dir / "dockerd.pid", 15)),
        ("stop sshd", lambda: _stop_pidfile(run_dir / "sshd.pid", 5)),
        ("kill processes", lambda: _kill_host_processes(name, run_dir)),
        ("unmount", lambda: _unmount_under([run_dir, *dirs])),
        ("delete netns", lambda: _del_netns(name)),
        ("delete veth", lambda: _del_link(f"{VETH_PREFIX}{index}")),
        ("remove cgroups", lambda: _remove_cgroups(name)),
        ("remove dirs", lambda: _remove_dirs([*dirs, run_dir])),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            log.warning("%s: %s: %s", name, what, exc)


def _stop_pidfile(pidfile: Path, grace_s: float) -> None:
    pid = _read_pid(pidfile)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, grace_s):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
    pidfile.unlink(missing_ok=True)


def _kill_host_processes(name: str, run_dir: Path) -> None:
    """Whatever still runs in the namespace, in the host's cgroups, or names its run dir."""
    marker = f"{run_dir}/"
    for _ in range(3):
        pids = set(_netns_pids(name)) | set(_cgroup_pids(name))
        for pid in _all_pids():
            if marker in " ".join(_cmdline(pid)):
                pids.add(pid)
        pids.discard(os.getpid())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            _wait_gone(pid, 5)


def _unmount_under(roots: list[Path]) -> None:
    prefixes = [str(root.resolve()) for root in roots]
    points: list[str] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        _run(["umount", "-l", point], check=False, timeout=15)


def _del_netns(name: str) -> None:
    if (NETNS_DIR / name).exists():
        _run(["ip", "netns", "del", name], check=False)


def _del_link(link: str) -> None:
    if Path("/sys/class/net", link).exists():
        _run(["ip", "link", "del", link], check=False)


def _remove_cgroups(name: str) -> None:
    for controller in _cgroup_dirs(name):
        for path in sorted(controller.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            controller.rmdir()


def _remove_dirs(dirs: list[Path]) -> None:
    for path in dirs:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():  # overlay leftovers with odd modes
                _run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=120)


def _owner_stamp(pid: int) -> str:
    return f"{pid} {_start_time(pid)}"


def _owner_alive(run_dir: Path) -> bool:
    try:
        pid_text, start = (run_dir / "owner").read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return _start_time(pid) == start


def sweep_test_hosts() -> list[str]:
    """Remove the test hosts of earlier sessions that were killed (their owner process is
    gone): namespaces named embench-th-*, their processes, mounts, veths, cgroups and run
    dirs. Hosts of a live session (this one included) are left alone. Returns the names
    removed."""
    names: set[str] = set()
    if NETNS_DIR.is_dir():
        names |= {p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX)}
    if RUN_ROOT.is_dir():
        names |= {p.name for p in RUN_ROOT.iterdir() if p.name.startswith(PREFIX)}
    removed: list[str] = []
    for name in sorted(names):
        try:
            index = int(name[len(PREFIX) :])
        except ValueError:
            continue
        run_dir = RUN_ROOT / name
        if _owner_alive(run_dir):
            continue
        if not (run_dir / "owner").exists() and min(_age_s(run_dir), _age_s(NETNS_DIR / name)) < 30:
            continue  # being made by a session that has not written its owner file yet
        dirs: list[Path] = []
        with contextlib.suppress(OSError):
            dirs.append(Path((run_dir / "work_dir").read_text().strip()))
        with contextlib.suppress(Exception):
            if (run_dir / "docker.sock").exists():
                _remove_all_containers(f"unix://{run_dir / 'docker.sock'}")
        _teardown(name, index, run_dir, dirs)
        removed.append(name)
    # veths whose namespace is gone, by name
    for link in Path("/sys/class/net").iterdir():
        suffix = link.name[len(VETH_PREFIX) :]
        if (
            link.name.startswith(VETH_PREFIX)
            and suffix.isdigit()
            and not (NETNS_DIR / host_name(int(suffix))).exists()
        ):
            _del_link(link.name)
    return removed


def create_test_hosts(work_dir: Path, n: int, made: list[TestHost]) -> list[TestHost]:
    """`n` new test hosts under `work_dir/th<index>` at free indexes (a concurrent session
    may take an index between the look and the make: then the next is tried). Each is added
    to `made` as soon as it exists, so that the caller destroys what was made on a failure."""
    hosts: list[TestHost] = []
    index = 0
    for _ in range(n):
        index = free_index(index + 1)
        while True:
            try:
                host = create_test_host(work_dir / f"th{index}", index)
                break
            except FileExistsError:
                index = free_index(index + 1)
        made.append(host)
        hosts.append(host)
    return hosts


def ssh_hosts_config(hosts: list[TestHost], *, one_core_each: bool = False) -> dict[str, Any]:
    """benchmark.yaml's `host:` section for the ssh provisioner over `hosts` (named th1,
    th2, ...), as many benchmarking at once as there are hosts; each host's lock in its own
    folder (test hosts share this machine's file system). `one_core_each`: host i runs its
    server and client on core i, so that no two hosts share a core."""
    entries = []
    for i, host in enumerate(hosts):
        entry: dict[str, Any] = {
            "name": f"th{i + 1}",
            "address": host.address,
            "user": host.user,
            "docker_socket": str(host.docker_socket),
            "lock_path": str(host.work_dir / "embench.lock"),
            # each test host has its own client key and pins its own host key
            "key_path": str(host.key_path),
            "known_hosts": str(host.known_hosts_path),
        }
        if one_core_each:
            entry.update(server_cpuset=str(i), client_cpuset=str(i))
        entries.append(entry)
    return {
        "provisioner": "ssh",
        "parallel": len(hosts),
        "ssh": {
            "host_key_policy": "pinned",
            "connect_timeout_s": 3,
            "hosts": entries,
        },
    }


def free_index(start: int = 1) -> int:
    """The lowest index from `start` not used by an existing test host."""
    for index in range(start, MAX_INDEX + 1):
        name = host_name(index)
        if not (NETNS_DIR / name).exists() and not (RUN_ROOT / name).exists():
            return index
    raise TestHostError("no free test host index (all of 1..254 in use)")


# /proc helpers


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _state(pid) == "Z":  # a zombie of ours: reap it
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _netns_pids(name: str) -> list[int]:
    if not (NETNS_DIR / name).exists():
        return []
    done = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 1e9


def _cgroup_dirs(name: str) -> list[Path]:
    if not CGROUP_ROOT.is_dir():
        return []
    found = [CGROUP_ROOT / name] if (CGROUP_ROOT / name / "cgroup.procs").exists() else []
    found += [c / name for c in CGROUP_ROOT.iterdir() if (c / name).is_dir()]
    return [p for p in dict.fromkeys(found) if p.is_dir()]


def _cgroup_pids(name: str) -> list[int]:
    pids: list[int] = []
    for top in _cgroup_dirs(name):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids += [int(p) for p in procs.read_text().split()]
    return pids


def _wait_port(address: str, port: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TestHostError(f"{what} did not accept connections on {address}:{port}")
