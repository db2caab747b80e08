"""What `embench run` shows while the DAG runs: one line per task, one per mapped group (a
target: model runtime variant) with the step it is in (preparing, serving, measuring...) and
its elapsed time, live on a terminal (rich) and one plain line per task start and end
elsewhere; Airflow's own logs (and the tasks') go to a file meanwhile.

`dag.test()` runs the tasks one after another in this process, so Airflow's task-instance
listener hooks (on_task_instance_running/success/failed/skipped), called by the task runner
around each task, drive the view: no polling of the metadata database, nothing in the DAG.
Tasks that never run (upstream failed, skipped by the scheduler loop) get their state from the
finished run (`finish`).

The log file: file descriptors 1 and 2 point at it for the whole run (Airflow's structlog
output, the logging handlers', warnings, subprocesses'); the view writes to a duplicate of the
terminal's descriptor taken before."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pluggy
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from airflow.sdk import DAG

# What a benchmark group is doing while each of its tasks runs.
PHASES = {
    "prepare_model": "preparing",
    "ship_to_host": "shipping",
    "tune_server": "tuning",
    "start_server": "starting server",
    "run_benchmark": "measuring",
    "stop_server": "stopping server",
    "store_results": "storing",
}
DONE = {
    "prepare_model": "prepared",
    "ship_to_host": "shipped",
    "tune_server": "tuned",
    "start_server": "server up",
    "run_benchmark": "measured",
    "stop_server": "server stopped",
    "store_results": "stored",
}
TAIL_LINES = 30
# Airflow's listener marker (airflow.listeners.hookimpl is this one): pluggy's, so that this
# module imports no Airflow before the log file takes the output (Airflow configures its logs
# on import and colours them when stdout is a terminal).
hookimpl = pluggy.HookimplMarker("airflow")
FINISHED = {"success", "failed", "skipped", "upstream_failed", "removed"}
STYLES = {
    "waiting": ("·", "dim"),
    "running": ("▶", "yellow"),
    "retrying": ("↻", "yellow"),
    "success": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "upstream_failed": ("-", "red"),
    "skipped": ("-", "dim"),
    "removed": ("-", "dim"),
}


def elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Row:
    """A task, or a mapped group's one expansion (all its tasks)."""

    name: str
    order: tuple[int, int]
    state: str = "waiting"
    detail: str = ""
    grouped: bool = False
    failed_in: str | None = None
    started: float | None = None
    ended: float | None = None

    def seconds(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else now) - self.started


@dataclass
class TaskRun:
    """One try of one task: where its lines are in the log file."""

    task_id: str
    map_index: int
    started: float
    log_from: int
    log_to: int | None = None


@dataclass
class RunView:
    """The run's rows and the listener's bookkeeping; `terminal` is where the view writes."""

    dag: Any
    terminal: IO[str]
    log_path: Path
    live: bool = False
    started: float = field(default_factory=time.monotonic)
    rows: dict[str, Row] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)
    group_sources: dict[str, str] = field(default_factory=dict)
    running: dict[tuple[str, int], TaskRun] = field(default_factory=dict)
    failures: list[TaskRun] = field(default_factory=list)
    group_ends: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.console = Console(file=self.terminal, force_terminal=self.live or None)
        self.depth = task_depths(self.dag)
        for task_id, task in self.dag.task_dict.items():
            group = mapped_group(task)
            if group is None:
                self.rows[task_id] = Row(task_id, (self.depth[task_id], 0))
            else:
                for source in group_sources(group):
                    self.group_sources[source] = group.group_id
                group_ids = {t for t in self.dag.task_dict if t.startswith(f"{group.group_id}.")}
                if not task.downstream_task_ids & group_ids:
                    self.group_ends.add(task_id.rsplit(".", 1)[-1])

    def log_end(self) -> int:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    # ---- keys and labels

    def row_key(self, task_id: str, map_index: int) -> str:
        group = mapped_group(self.dag.task_dict[task_id])
        if group is None:
            return task_id
        # map index -1: the group never expanded (what it maps over failed): one row for it
        return group.group_id if map_index < 0 else f"{group.group_id}[{map_index}]"

    def row_for(self, task_id: str, map_index: int) -> Row:
        key = self.row_key(task_id, map_index)
        if key not in self.rows:  # an expansion the view was not told of (see `expanded`)
            group = key.split("[", 1)[0]
            order = (self.group_depth(group), max(map_index, 0))
            self.rows[key] = Row(key, order, grouped=True)
        return self.rows[key]

    def group_depth(self, group: str) -> int:
        return min(
            (d for t, d in self.depth.items() if t.startswith(f"{group}.")),
            default=0,
        )

    def expanded(self, source_task_id: str, value: Any) -> None:
        """The task a mapped group expands over returned `value`: a row per expansion, named
        by its target (model runtime variant) when it looks like one."""
        group = self.group_sources.get(source_task_id)
        if group is None or not isinstance(value, list):
            return
        for index, item in enumerate(value):
            key = f"{group}[{index}]"
            name = f"{group} {target_label(item)}" if target_label(item) else key
            if key in self.rows:
                self.rows[key].name = name
            else:
                self.rows[key] = Row(name, (self.group_depth(group), index), grouped=True)

    # ---- events (the listener's, in the main thread)

    def task_running(self, task_id: str, map_index: int, try_number: int) -> None:
        now = time.monotonic()
        short = task_id.rsplit(".", 1)[-1]
        with self.lock:
            row = self.row_for(task_id, map_index)
            if row.grouped:
                phase = PHASES.get(short, short)
                row.detail = f"in {row.failed_in}; {phase}" if row.failed_in else phase
            if try_number > 1:
                row.detail = f"{row.detail} (try {try_number})".strip()
            row.state = "failed" if row.failed_in else "running"
            row.started = now if row.started is None else row.started
            row.ended = None
            self.running[(task_id, map_index)] = TaskRun(task_id, map_index, now, self.log_end())
        if not self.live:
            what = f"{PHASES.get(short, short)} ({short})" if row.grouped else "running"
            self.say(f"{row.name}: {what}" + (f" (try {try_number})" if try_number > 1 else ""))

    def task_ended(self, task_id: str, map_index: int, state: str) -> None:
        now = time.monotonic()
        short = task_id.rsplit(".", 1)[-1]
        with self.lock:
            row = self.row_for(task_id, map_index)
            run = self.running.pop((task_id, map_index), None)
            if run is not None:
                run.log_to = self.log_end()
            if state == "failed":
                if run is not None:
                    self.failures.append(run)
                row.failed_in = row.failed_in or short
            if row.failed_in and row.grouped:  # a teardown after the failure keeps it failed
                row.state, row.detail, row.ended = "failed", f"in {row.failed_in}", now
            elif state == "up_for_retry":
                row.state, row.detail = "retrying", f"{short} failed, retrying"
            elif row.grouped and short not in self.group_ends:
                row.state, row.detail = "waiting", DONE.get(short, f"{short} done")
            else:
                row.state, row.ended = state, now
                row.detail = ""
        if not self.live:
            took = f" in {now - run.started:.1f} s" if run is not None else ""
            said = "failed, retrying" if state == "up_for_retry" else state
            self.say(f"{row.name}: {short + ' ' if row.grouped else ''}{said}{took}")

    def finish(self, states: list[tuple[str, int, str]]) -> None:
        """The run ended: (task id, map index, state) of its task instances. Rows that no
        listener call finished (upstream failed, skipped by the scheduler loop) take theirs."""
        now = time.monotonic()
        with self.lock:
            for task_id, map_index, state in states:
                if task_id not in self.dag.task_dict:
                    continue
                row = self.row_for(task_id, map_index)
                if row.state not in ("waiting", "running", "retrying"):
                    continue
                if state in FINISHED - {"success"}:
                    row.state = state
                elif state == "success" and row.started is None:
                    row.state = state  # marked, not run
                else:
                    continue
                row.ended = now if row.started is not None else None
                if not self.live:
                    self.say(f"{row.name}: {state.replace('_', ' ')}")

    # ---- output

    def say(self, text: str) -> None:
        stamp = elapsed(time.monotonic() - self.started)
        self.terminal.write(f"[{stamp:>6}] {text}\n")
        self.terminal.flush()

    def __rich__(self) -> RenderableType:
        now = time.monotonic()
        with self.lock:
            rows = sorted(self.rows.values(), key=lambda r: r.order)
            table = Table.grid(padding=(0, 2))
            table.add_column(no_wrap=True)
            table.add_column(no_wrap=True)
            table.add_column(no_wrap=True)
            table.add_column(justify="right", no_wrap=True)
            for row in rows:
                mark, style = STYLES.get(row.state, ("?", ""))
                seconds = row.seconds(now)
                table.add_row(
                    Text(f"{mark} {row.name}", style=style if row.state != "running" else ""),
                    Text(row.state.replace("_", " "), style=style),
                    Text(row.detail, style="dim" if row.state != "running" else "yellow"),
                    "" if seconds is None else elapsed(seconds),
                )
        head = Text.assemble(
            (f"{self.dag.dag_id}", "bold"),
            f"  {elapsed(now - self.started)} elapsed  ·  Airflow's logs: {self.log_path}",
        )
        return Group(head, table)

    def failure_tail(self, lines: int = TAIL_LINES) -> tuple[str, list[str]]:
        """The first task that failed for good and its try's last log lines; ("", the log's
        last lines) when none did (the run itself failed)."""
        if not self.failures:
            return "", whole_log_tail(self.log_path, lines)
        run = self.failures[0]
        with self.log_path.open("rb") as log:
            log.seek(run.log_from)
            raw = log.read((run.log_to or self.log_end()) - run.log_from)
        name = run.task_id if run.map_index < 0 else f"{run.task_id}[{run.map_index}]"
        return name, raw.decode("utf-8", errors="replace").splitlines()[-lines:]


def whole_log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


class Listener:
    """Airflow's task-instance listener hooks, forwarded to the view."""

    def __init__(self, view: RunView) -> None:
        self.view = view

    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self.view.task_running(
            task_instance.task_id, task_instance.map_index, task_instance.try_number
        )

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        if task_instance.task_id in self.view.group_sources:
            with contextlib.suppress(Exception):  # a label is nice to have, never a failure
                value = task_instance.xcom_pull(task_ids=task_instance.task_id)
                with self.view.lock:
                    self.view.expanded(task_instance.task_id, value)
        self.view.task_ended(task_instance.task_id, task_instance.map_index, "success")

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        state = str(getattr(task_instance.state, "value", task_instance.state) or "failed")
        self.view.task_ended(
            task_instance.task_id,
            task_instance.map_index,
            "up_for_retry" if state == "up_for_retry" else "failed",
        )

    @hookimpl
    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        self.view.task_ended(task_instance.task_id, task_instance.map_index, "skipped")


# ---- the DAG's shape


def mapped_group(task: Any) -> Any:
    """The mapped task group the task belongs to, or None."""
    from airflow.sdk.definitions.taskgroup import MappedTaskGroup

    group = task.task_group
    while group is not None:
        if isinstance(group, MappedTaskGroup):
            return group
        group = group.parent_group
    return None


def group_sources(group: Any) -> list[str]:
    """The tasks whose return value a mapped group expands over."""
    return [op.task_id for op, _ in group._expand_input.iter_references()]


def task_depths(dag: Any) -> dict[str, int]:
    """Each task's longest distance from a root: the view's top-to-bottom order."""
    depths: dict[str, int] = {}

    def depth(task_id: str) -> int:
        if task_id not in depths:
            upstream = dag.task_dict[task_id].upstream_task_ids
            depths[task_id] = 1 + max((depth(u) for u in upstream), default=-1)
        return depths[task_id]

    for task_id in dag.task_dict:
        depth(task_id)
    return depths


def target_label(item: Any) -> str:
    if not isinstance(item, dict):
        return ""
    parts = [str(item[k]) for k in ("model", "runtime", "variant") if item.get(k)]
    if (item.get("repetition") or 1) > 1:
        parts.append(f"#{item['repetition']}")
    return " ".join(parts)


# ---- the log file and the view around a run


@contextlib.contextmanager
def logs_to_file(path: Path) -> Iterator[IO[str]]:
    """File descriptors 1 and 2 (and so sys.stdout, sys.stderr, structlog's and logging's
    output, child processes') go to `path`; yields a stream on the terminal's stdout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = open(saved[0], "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield terminal
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (log_fd, *saved):
            os.close(fd)
        terminal.close()


@contextlib.contextmanager
def showing(view: RunView) -> Iterator[RunView]:
    """The listener registered, and on a terminal the live display, for the block."""
    from airflow.sdk.listener import get_listener_manager

    manager = get_listener_manager()
    listener = Listener(view)
    manager.add_listener(listener)
    live = (
        Live(
            view,
            console=view.console,
            refresh_per_second=4,
            redirect_stdout=False,  # sys.stdout is the log file's: rich must not take it
            redirect_stderr=False,
            transient=False,
        )
        if view.live
        else None
    )
    try:
        if live is not None:
            live.start()
        yield view
    finally:
        if live is not None:
            live.refresh()
            live.stop()
        manager.pm.unregister(listener)


def is_terminal(stream: IO[str]) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError):
        return False


def dag_view(dag: DAG, terminal: IO[str], log_path: Path) -> RunView:
    return RunView(dag, terminal, log_path, live=is_terminal(terminal))
