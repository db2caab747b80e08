"""What sets a peer target apart from ours: the API it is driven through, the request's
"model" field an external server may want, and the precision whose parity gate applies."""

from __future__ import annotations

from typing import Any

from embench.config import AppConfig
from embench.config.schema import EXTERNAL_RUNTIME, PEER_RUNTIMES


def endpoint_of(runtime: str) -> str:
    """Peers are driven through the OpenAI API they share; ours through its own /embed."""
    return "openai" if runtime in PEER_RUNTIMES else "embed"


def request_model_of(target: dict[str, Any], config: AppConfig) -> str | None:
    if target["runtime"] != EXTERNAL_RUNTIME:
        return None
    return config.external(target["variant"]).request_model


def precision_of(target: dict[str, Any], config: AppConfig) -> str:
    """The variant, or what an external server declares it computes in."""
    if target["runtime"] != EXTERNAL_RUNTIME:
        return str(target["variant"])
    return config.external(target["variant"]).precision


def client_options(target: dict[str, Any], config: AppConfig) -> dict[str, Any]:
    """The load client's options for the target (the rest are the client's defaults)."""
    options: dict[str, Any] = {"endpoint": endpoint_of(target["runtime"])}
    if request_model := request_model_of(target, config):
        options["request_model"] = request_model
    return options
