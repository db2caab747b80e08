"""Host slots: the benchmark hosts a run may hold at once.

A slot is one host for the whole run, with its own Airflow pool of one slot, so that it runs
one benchmark at a time while the other slots run theirs. benchmark.yaml fixes the slots when
the DAG is parsed (`host.parallel` hosts, per instance type of `host.ec2.instance_types`);
the plan then gives every target to one slot. Slot 0 keeps the names a single-host DAG always
had (`provision_host`, `benchmark`, pool `embench_benchmark_host`), so a one-host deployment,
its history and its task ids are unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from embench.config.schema import HostConfig

HOST_POOL = "embench_benchmark_host"  # slot 0's pool; slot i's adds `_i`
SLOT_LABEL = "host_slot"  # in results, container labels and lock holders
_GROUP_SUFFIX = re.compile(r"^benchmark_(\d+)\.")


@dataclass(frozen=True)
class HostSlot:
    index: int
    instance_type: str | None  # the ec2 axis; None: the configured or the host's own type

    @property
    def suffix(self) -> str:
        """Appended to the slot's task and group ids (none for slot 0)."""
        return f"_{self.index}" if self.index else ""

    @property
    def pool(self) -> str:
        return HOST_POOL + self.suffix


def host_slots(host: HostConfig) -> list[HostSlot]:
    """Every slot the DAG has: `parallel` per instance type (one type when there is no axis)."""
    types: list[str | None] = list(host.ec2.instance_types) or [None]
    return [
        HostSlot(t * host.parallel + p, instance_type)
        for t, instance_type in enumerate(types)
        for p in range(host.parallel)
    ]


def host_pools(host: HostConfig) -> list[str]:
    """The Airflow pools the DAG's slots use: each must exist with one slot."""
    return [slot.pool for slot in host_slots(host)]


def pool_definitions(host: HostConfig) -> dict[str, dict[str, Any]]:
    """The pools in `airflow pools import` form: one slot each, one benchmark per host."""
    return {
        pool: {"slots": 1, "description": "one benchmark per host", "include_deferred": False}
        for pool in host_pools(host)
    }


def slots_in_use(host: HostConfig, provisioner: str) -> list[HostSlot]:
    """The slots a run with this provisioner takes. local: one (this machine's cores cannot
    be shared by two benchmarks); ssh: one per listed host at most; ec2: all, typed."""
    slots = host_slots(host)
    if provisioner == "ec2":
        return slots
    untyped = [HostSlot(s.index, None) for s in slots[: host.parallel]]
    if provisioner == "local":
        return untyped[:1]
    return untyped[: max(1, len(host.ssh.hosts))]


def assign(targets: list[dict[str, Any]], slots: list[HostSlot]) -> list[dict[str, Any]]:
    """Each target on every instance type of the axis, dealt round-robin over that type's
    slots in plan order (which interleaves models and runtimes, so each host gets a mix)."""
    by_type: dict[str | None, list[HostSlot]] = {}
    for slot in slots:
        by_type.setdefault(slot.instance_type, []).append(slot)
    assigned = []
    for instance_type, typed in by_type.items():
        for n, target in enumerate(targets):
            slot = typed[n % len(typed)]
            assigned.append({**target, SLOT_LABEL: slot.index, "instance_type": instance_type})
    return assigned


def targets_of(targets: list[dict[str, Any]], slot: int) -> list[dict[str, Any]]:
    return [t for t in targets if t.get(SLOT_LABEL, 0) == slot]


def slot_of_task(task_id: str) -> int:
    """The slot of a task from its id (`benchmark_2.run_benchmark` is slot 2)."""
    match = _GROUP_SUFFIX.match(task_id)
    if match:
        return int(match.group(1))
    tail = task_id.rsplit("_", 1)
    if len(tail) == 2 and tail[1].isdigit() and tail[0] in ("provision_host", "release_host"):
        return int(tail[1])
    return 0
