"""Load the YAML config files into the typed schema, with errors that name file, line, key path
and problem: `config/benchmark.yaml:14: scenarios[2].concurrency: must be > 0, got -4`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from embench.config.schema import (
    BenchmarkFile,
    CostConfig,
    ExternalServer,
    ModelConfig,
    ModelsFile,
    PriceTable,
)
from embench.errors import ConfigError

SchemaT = TypeVar("SchemaT", bound=BaseModel)

# Friendlier wording for pydantic's most common complaints; the rest use pydantic's own text.
_MESSAGES = {
    "missing": "required key is missing",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
}


@dataclass(frozen=True)
class AppConfig:
    """Both config files, parsed and cross-checked."""

    models: dict[str, ModelConfig]
    benchmark: BenchmarkFile
    config_dir: Path
    # benchmark.yaml's cost.price_table (prices.yaml), None when the file is not there
    prices: PriceTable | None = None

    def model(self, model_id: str) -> ModelConfig:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(self.models)
            raise ConfigError(
                f"unknown model id {model_id!r}; models.yaml defines: {known}"
            ) from None

    def external(self, name: str) -> ExternalServer:
        """benchmark.yaml's external server `name`."""
        for server in self.benchmark.external:
            if server.name == name:
                return server
        known = ", ".join(e.name for e in self.benchmark.external) or "none"
        raise ConfigError(f"no external server {name!r} in benchmark.yaml (it lists: {known})")

    def external_for(self, model_id: str) -> list[ExternalServer]:
        """The external servers that serve `model_id`, in the file's order."""
        return [e for e in self.benchmark.external if e.model == model_id]


def default_config_dir() -> Path:
    env = os.environ.get("EMBENCH_CONFIG_DIR")
    if env:
        return Path(env)
    # plugins/embench/config/loader.py -> repository root / config
    return Path(__file__).resolve().parents[3] / "config"


def load_config(config_dir: Path | None = None) -> AppConfig:
    config_dir = config_dir or default_config_dir()
    models_path = config_dir / "models.yaml"
    benchmark_path = config_dir / "benchmark.yaml"
    models = load_yaml_file(models_path, ModelsFile)
    benchmark = load_yaml_file(benchmark_path, BenchmarkFile)
    for index, model_id in enumerate(benchmark.models):
        if model_id not in models.models:
            where = _locate(_compose(benchmark_path), ["models", index])
            known = ", ".join(models.models)
            raise ConfigError(
                f"{benchmark_path}{where}: models[{index}]: unknown model id {model_id!r}; "
                f"{models_path.name} defines: {known}"
            )
    for index, external in enumerate(benchmark.external):
        if external.model not in models.models:
            where = _locate(_compose(benchmark_path), ["external", index, "model"])
            raise ConfigError(
                f"{benchmark_path}{where}: external[{index}].model: unknown model id "
                f"{external.model!r}; {models_path.name} defines: {', '.join(models.models)}"
            )
    prices = load_price_table(config_dir, benchmark, benchmark_path)
    return AppConfig(
        models=dict(models.models), benchmark=benchmark, config_dir=config_dir, prices=prices
    )


def load_price_table(
    config_dir: Path, benchmark: BenchmarkFile, benchmark_path: Path
) -> PriceTable | None:
    """benchmark.yaml's cost.price_table, relative to the config folder. The default table
    may be absent (no prices: results carry no cost); one named in benchmark.yaml must exist.
    A malformed table is an error that names its file, line and key."""
    name = benchmark.cost.price_table
    path = config_dir / name
    if not path.is_file():
        if name == CostConfig.model_fields["price_table"].default:
            return None
        where = _locate(_compose(benchmark_path), ["cost", "price_table"])
        raise ConfigError(
            f"{benchmark_path}{where}: cost.price_table: file not found: {path} "
            f"(relative to the config folder {config_dir})"
        )
    return load_yaml_file(path, PriceTable)


def load_yaml_file(path: Path, schema: type[SchemaT]) -> SchemaT:
    """Parse one YAML file into `schema`, or raise ConfigError with one clear message."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{path}{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: expected a mapping at the top level, got {got}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, text, data, exc)) from None


def _describe(path: Path, text: str, data: Any, exc: ValidationError) -> str:
    root = _compose_text(text)
    lines = []
    for error in exc.errors():
        keys = _data_path(data, error["loc"])
        if error["type"] == "unknown_key":
            keys.append(error["ctx"]["key"])
        problem = _MESSAGES.get(error["type"], error["msg"])
        problem = problem.removeprefix("Value error, ")
        problem = problem[:1].lower() + problem[1:]
        if keys and keys[-1] == "[key]":  # pydantic's tag of a bad mapping key, not a key
            keys.pop()
        if error["type"] not in ("missing", "unknown_key") and _is_scalar(error["input"]):
            problem += f", got {error['input']!r}"
        where = _locate(root, keys)
        lines.append(f"{path}{where}: {_format_keys(keys) or '(top level)'}: {problem}")
    return "\n".join(lines)


def _data_path(data: Any, loc: tuple[int | str, ...]) -> list[int | str]:
    """Keep the parts of a pydantic error location that are real keys or indexes of the data,
    dropping union tags and validator names pydantic inserts."""
    keys: list[int | str] = []
    node = data
    for position, part in enumerate(loc):
        if isinstance(node, dict) and node.get("kind") == part:
            continue  # the tag of a discriminated union (model sources)
        if _has_child(node, part):
            node = node[part]
        elif not (position == len(loc) - 1 and isinstance(node, dict)):
            continue  # a label pydantic inserts, not a key of the file
        keys.append(part)
    return keys


def _has_child(node: Any, key: int | str) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)


def _format_keys(keys: list[int | str]) -> str:
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _compose(path: Path) -> yaml.Node | None:
    return _compose_text(path.read_text(encoding="utf-8"))


def _compose_text(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _locate(root: yaml.Node | None, keys: list[int | str]) -> str:
    """':LINE' of the deepest node along `keys` in the composed YAML tree."""
    node = root
    line = None
    for key in keys:
        if node is None:
            break
        line = node.start_mark.line + 1
        child = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(key):
                    line = key_node.start_mark.line + 1
                    child = value_node
                    break
        elif isinstance(node, yaml.SequenceNode) and _has_child(node.value, key):
            child = node.value[key]
            line = child.start_mark.line + 1
        node = child
    return f":{line}" if line else ""
