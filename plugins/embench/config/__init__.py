"""Configuration: the typed schema and the YAML loader."""

from embench.config.loader import AppConfig, default_config_dir, load_config, load_yaml_file
from embench.config.schema import (
    ALL_RUNTIMES,
    ALL_VARIANTS,
    RUNTIME_VARIANTS,
    BenchmarkFile,
    CostConfig,
    ModelConfig,
    ModelsFile,
    PriceTable,
    ScenarioConfig,
    Variant,
)

__all__ = [
    "ALL_RUNTIMES",
    "ALL_VARIANTS",
    "RUNTIME_VARIANTS",
    "AppConfig",
    "BenchmarkFile",
    "CostConfig",
    "ModelConfig",
    "ModelsFile",
    "PriceTable",
    "ScenarioConfig",
    "Variant",
    "default_config_dir",
    "load_config",
    "load_yaml_file",
]
