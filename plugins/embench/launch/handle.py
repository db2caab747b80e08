"""ServerHandle: what start_server hands to the benchmark and to the teardown (as XCom)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from embench.errors import EmbenchError

# external: a server the user runs (benchmark.yaml's `external`): nothing starts or stops it
LauncherKind = Literal["docker", "process", "external"]


@dataclass(frozen=True)
class ServerHandle:
    launcher: LauncherKind
    url: str  # as the worker reaches it (health checks)
    name: str  # container name, or "pid <n>"
    container_id: str | None = None
    pid: int | None = None
    # the process launcher: the pid's start time (/proc/<pid>/stat field 22) and boot, which
    # tell the server from a later process given the same pid, and the state file where every
    # server started for the target is recorded (a retry's replacement too)
    pid_start_time: int | None = None
    boot_id: str | None = None
    state_file: str | None = None
    docker_url: str | None = None
    image: str | None = None
    image_digest: str | None = None
    start_to_healthy_s: float | None = None
    log_path: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    network: str | None = None  # the Docker network the client joins; None: the host's
    client_url: str | None = None  # as the client reaches it, when not `url`

    @property
    def url_for_client(self) -> str:
        return self.client_url or self.url

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerHandle:
        return cls(**data)


def wait_healthy(
    url: str,
    deadline_s: float,
    still_running: Callable[[], str | None],
    poll_s: float = 0.2,
) -> float:
    """Poll GET {url}/health until 200; returns the seconds it took. `still_running` returns
    None while the server lives, else why it stopped (then waiting is pointless)."""
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < deadline_s:
        stopped = still_running()
        if stopped:
            raise EmbenchError(f"the server stopped before it became healthy: {stopped}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"  # 503 while loading and warming up
        except OSError as exc:
            last = type(exc).__name__
        time.sleep(poll_s)
    raise EmbenchError(
        f"the server at {url} was not healthy within {deadline_s:.0f} s (last: {last})"
    )
