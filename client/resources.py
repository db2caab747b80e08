"""Resource sampling: the server's CPU% and RSS (Docker stats API or psutil) and the client's
own CPU%. Each sample is one short, bounded, blocking call made off the event loop.

CPU% is percent of ONE core (200 = two cores busy), from the CPU time consumed between two
samples over the wall time between them (for Docker, between the engine's own timestamps of
the readings: a stats call takes most of a second on a busy engine). RSS for a container is
the cgroup's memory usage minus inactive file cache (what `docker stats` shows); for a
process, the RSS of the process and its children.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import psutil


@dataclass(frozen=True)
class ServerSample:
    cpu_pct: float | None
    rss_bytes: int | None


class ServerSampler(Protocol):
    source: Literal["docker", "psutil"]

    def sample(self) -> ServerSample: ...

    def describe(self) -> dict[str, Any]: ...


class SamplerError(Exception):
    pass


class ProcessSampler:
    """A local server process (and its children) by PID."""

    source: Literal["docker", "psutil"] = "psutil"

    def __init__(self, pid: int) -> None:
        try:
            self.proc = psutil.Process(pid)
            self._last = (time.monotonic(), self._cpu_seconds())
        except psutil.Error as exc:
            raise SamplerError(f"cannot sample process {pid}: {exc}") from exc

    def _procs(self) -> list[psutil.Process]:
        return [self.proc, *self.proc.children(recursive=True)]

    def _cpu_seconds(self) -> float:
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def sample(self) -> ServerSample:
        now, cpu = time.monotonic(), self._cpu_seconds()
        last_t, last_cpu = self._last
        self._last = (now, cpu)
        rss = 0
        for p in self._procs():
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                continue
        pct = 100.0 * (cpu - last_cpu) / (now - last_t) if now > last_t else None
        return ServerSample(pct if pct is None else max(0.0, pct), rss or None)

    def describe(self) -> dict[str, Any]:
        return {"pid": self.proc.pid}


class DockerSampler:
    """A container, through the Docker engine's stats API (one-shot, bounded by a timeout)."""

    source: Literal["docker", "psutil"] = "docker"

    def __init__(self, container: str, docker_url: str | None = None, timeout_s: float = 5) -> None:
        try:
            import docker
        except ImportError as exc:
            raise SamplerError("sampling a container needs the 'docker' package") from exc
        try:
            self.client = (
                docker.DockerClient(base_url=docker_url, timeout=int(timeout_s))
                if docker_url
                else docker.from_env(timeout=int(timeout_s))
            )
            self.container = self.client.containers.get(container)
        except Exception as exc:
            raise SamplerError(f"cannot reach container {container!r}: {exc}") from exc
        self._one_shot = True
        self._last: tuple[float, int] | None = None
        self.sample()

    def _stats(self) -> dict[str, Any]:
        if self._one_shot:
            try:
                return self.container.stats(stream=False, one_shot=True)
            except Exception:
                self._one_shot = False  # API < 1.41: the two-sample call (about 1 s)
        return self.container.stats(stream=False)

    def sample(self) -> ServerSample:
        stats = self._stats()
        now = _read_time(stats.get("read")) or time.monotonic()
        usage_ns = int(stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage") or 0)
        pct = None
        if self._last is not None and usage_ns and now > self._last[0]:
            pct = max(0.0, 100.0 * (usage_ns - self._last[1]) / 1e9 / (now - self._last[0]))
        self._last = (now, usage_ns)
        mem = stats.get("memory_stats", {})
        usage = mem.get("usage")
        rss = None
        if usage is not None:
            inner = mem.get("stats", {})
            inactive = inner.get("inactive_file", inner.get("total_inactive_file", 0))
            rss = int(usage) - int(inactive or 0)
        return ServerSample(pct, rss)

    def describe(self) -> dict[str, Any]:
        attrs = self.container.attrs
        image_id = attrs.get("Image")
        digest = None
        try:
            repo_digests = self.client.images.get(image_id).attrs.get("RepoDigests") or []
            digest = repo_digests[0].split("@", 1)[1] if repo_digests else None
        except Exception:
            digest = None
        return {
            "container_id": attrs.get("Id"),
            "image": attrs.get("Config", {}).get("Image"),
            # a repository digest when the image came from a registry, else the image id
            "image_digest": digest or image_id,
        }


def _read_time(value: object) -> float | None:
    """The engine's timestamp of a stats reading (RFC 3339, nanoseconds), as seconds."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    try:
        head, _, frac = value.rstrip("Z").partition(".")
        frac = frac.split("+")[0].split("-")[0]
        base = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
        return base + (float(f"0.{frac}") if frac else 0.0)
    except ValueError:
        return None


class ClientCpu:
    """This process's CPU% (of one core) between calls."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)

    def sample(self) -> float:
        return self.proc.cpu_percent(None)


def make_server_sampler(
    container: str | None, docker_url: str | None, pid: int | None
) -> ServerSampler | None:
    if container:
        return DockerSampler(container, docker_url)
    if pid:
        return ProcessSampler(pid)
    return None
