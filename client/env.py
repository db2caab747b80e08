"""The environment fingerprint of the machine the client runs on."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from client.result import EnvironmentFingerprint, stable_hash

LIBRARIES = ("aiohttp", "numpy", "pydantic", "hdrhistogram", "psutil", "rich", "docker")
OPTIONAL_LIBRARIES = ("orjson", "uvloop", "tokenizers")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("unknown", "", platform.machine()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = sorted(value.split())
            if flags and model not in ("unknown", "", platform.machine()):
                break
    except OSError:
        pass
    return model, flags


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES + OPTIONAL_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def fingerprint() -> EnvironmentFingerprint:
    model, flags = _cpuinfo()
    logical = os.cpu_count() or 0
    physical = psutil.cpu_count(logical=False)
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    memory = psutil.virtual_memory().total
    os_release = _os_release()
    hardware = {
        "cpu_model": model,
        "cpu_flags": flags,
        "cpu_count_logical": logical,
        "memory_gib": round(memory / 2**30),
        "os": platform.system(),
        "os_release": os_release,
        "arch": platform.machine(),
    }
    return EnvironmentFingerprint(
        hostname=socket.gethostname(),
        os=platform.system(),
        os_release=os_release,
        kernel=platform.release(),
        arch=platform.machine(),
        python=platform.python_version(),
        cpu_model=model,
        cpu_flags=flags,
        cpu_count_logical=logical,
        cpu_count_physical=physical,
        cpu_affinity=affinity,
        memory_total_bytes=memory,
        libraries=library_versions(),
        hardware_key=stable_hash(hardware),
    )


def git_sha() -> str | None:
    """EMBENCH_GIT_SHA, else `git rev-parse HEAD` of the working directory (bounded)."""
    if os.environ.get("EMBENCH_GIT_SHA"):
        return os.environ["EMBENCH_GIT_SHA"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None
