"""From benchmark.yaml to the client's scenario file, and `embench bench` around the client.

The scenario file (client.scenario.ScenarioFile, JSON) is the one hand-over between the
pipeline and the load client, whether the client runs in-process, as a process or in its
container: the client's models are built from the config models field by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.scenario import (
    ClientOptions,
    RunLabels,
    ScenarioFile,
    ScenarioParams,
    StabilityParams,
    WarmupParams,
)
from embench.config import AppConfig
from embench.errors import ConfigError


def select_scenarios(config: AppConfig, names: list[str] | None) -> list[ScenarioParams]:
    scenarios = config.benchmark.scenarios
    known = [s.name for s in scenarios]
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown scenario {unknown[0]!r}; benchmark.yaml defines: {', '.join(known)}"
        )
    chosen = [s for s in scenarios if not names or s.name in names]
    return [ScenarioParams.model_validate(s.model_dump()) for s in chosen]


def scenario_file(
    config: AppConfig,
    names: list[str] | None = None,
    labels: RunLabels | None = None,
    tokenizer: str | None = None,
    options: dict[str, Any] | None = None,
) -> ScenarioFile:
    """`tokenizer`: the model's tokenizer.json, for exact text lengths (a path relative to
    the scenario file travels with it to a client elsewhere). `options`: more of the
    client's options (the endpoint of a peer, say)."""
    bench = config.benchmark
    chosen = {**({"tokenizer": tokenizer} if tokenizer else {}), **(options or {})}
    return ScenarioFile(
        scenarios=select_scenarios(config, names),
        warmup=WarmupParams.model_validate(bench.warmup.model_dump()),
        stability=StabilityParams.model_validate(bench.stability.model_dump()),
        options=ClientOptions(**chosen) if chosen else None,
        metadata=labels,
    )


def write_scenario_file(path: Path, document: ScenarioFile) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document.model_dump_json(indent=2, exclude_none=True), encoding="utf-8")
    return path
