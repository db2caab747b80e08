"""The load client's command line (one for every launcher) and its local-process launcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from embench.errors import EmbenchError
from embench.launch.handle import ServerHandle

# The client's exit statuses (client/cli.py), in words.
CLIENT_EXIT_MEANING = {
    2: "bad arguments or scenario file",
    3: "the server was not ready in time",
    4: "the server went away during the run",
    5: "a scenario was invalid",
    130: "interrupted",
}


def client_arguments(handle: ServerHandle, scenario_file: str, out: str) -> list[str]:
    """`python -m client` arguments: the server as the client reaches it, the scenarios, where
    to write, and how to sample the server's CPU and memory (Docker stats for a container,
    psutil for a process)."""
    args = ["run", "--url", handle.url_for_client, "--scenario-file", scenario_file]
    args += ["--out", out]
    args += ["--progress", "plain", "--wait-timeout", "60"]
    if handle.container_id:
        args += ["--container", handle.container_id]
    if handle.pid:
        args += ["--server-pid", str(handle.pid)]
    if handle.image:
        args += ["--image", handle.image]
    if handle.image_digest:
        args += ["--image-digest", handle.image_digest]
    return args


def client_inputs(scenarios: Path) -> dict[str, bytes]:
    """The files a client elsewhere needs, by name: the scenario file and what it names
    beside itself (the model's tokenizer.json)."""
    from client.scenario import ScenarioFile

    document = ScenarioFile.model_validate_json(scenarios.read_bytes())
    files = {scenarios.name: scenarios.read_bytes()}
    tokenizer = document.options.tokenizer if document.options else None
    if tokenizer and not Path(tokenizer).is_absolute():
        files[tokenizer] = (scenarios.parent / tokenizer).read_bytes()
    return files


def describe_exit(status: int) -> str:
    meaning = CLIENT_EXIT_MEANING.get(status, "failed")
    return f"the load client exited with status {status} ({meaning})"


def run_client_process(args: list[str], log_path: Path, timeout_s: float) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        try:
            status = subprocess.run(
                [sys.executable, "-m", "client", *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout_s,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            raise EmbenchError(f"the load client ran past {timeout_s:.0f} s") from None
    if status != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise EmbenchError(f"{describe_exit(status)}; client log tail:\n{tail}")
