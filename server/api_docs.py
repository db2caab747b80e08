"""What /openapi.json says of each route: request bodies, their constraints and every status code
the server answers with. The routes in app.py take these as keyword arguments of their
decorators, so each route is declared once and documented here; tests/server/
test_openapi_contract.py holds the server to it with schemathesis (all checks).

The request bodies are parsed by hand (server.protocol), so FastAPI knows nothing of them: the
schemas here state what that parser enforces. Two limits are not fixed in code: the most texts
per request and the largest body come from the settings (routes(settings)), and `dimensions`
must equal the loaded model's embedding dimension, known only once the model has loaded
(install_openapi() puts it into the document as it is served).

Beyond what each route lists: a method a path does not have gets 405 with an Allow header, a
path the server does not have gets 404 (both with the JSON error body)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from server.config import ServerSettings
from server.protocol import (
    JSON_MEDIA_TYPE,
    EmbedRequestDoc,
    EmbedResponseDoc,
    ErrorDoc,
    HealthDoc,
    InfoDoc,
    OpenAIRequestDoc,
    OpenAIResponseDoc,
)

PLAIN_TEXT = "text/plain"
# The component FastAPI makes of ErrorDoc (named after the class), for the routes whose own
# media type is not JSON (/metrics), where a "model" would be filed under that media type.
ERROR_REF = {"$ref": f"#/components/schemas/{ErrorDoc.__name__}"}


class MetricsResponse(Response):
    """Only for the documentation of /metrics: its media type, Prometheus' text format as the
    installed prometheus_client writes it (CONTENT_TYPE_LATEST, what the route sends)."""

    media_type = CONTENT_TYPE_LATEST


def _retry_after(*, required: bool) -> dict[str, Any]:
    return {
        "Retry-After": {
            "description": "seconds to wait before trying again",
            "required": required,
            "schema": {"type": "integer", "minimum": 0},
        }
    }


def _error(description: str, **extra: Any) -> dict[str, Any]:
    """A response with the JSON error body, {"error": {"message", "type", "param", "code"}}."""
    return {"description": description, "model": ErrorDoc, **extra}


# uvicorn answers these itself, in plain text, before the app sees the request.
_PLAIN_TEXT_400 = {PLAIN_TEXT: {"schema": {"type": "string"}}}
_PLAIN_TEXT_503 = {PLAIN_TEXT: {"schema": {"type": "string"}}}
_CONNECTION_LIMIT = (
    "; or, in plain text and without Retry-After, more connections are open than "
    "max_connections allows"
)
_INTERNAL_ERROR = "an unexpected error in the server"


def _timing_headers() -> dict[str, Any]:
    milliseconds = {"type": "number", "minimum": 0}
    count = {"type": "integer", "minimum": 0}
    headers = {
        "x-tokenization-time": ("milliseconds spent tokenizing the request's texts", milliseconds),
        "x-queue-time": ("milliseconds its texts waited for an inference worker", milliseconds),
        "x-inference-time": ("milliseconds of the inference batches it was part of", milliseconds),
        "x-total-time": ("milliseconds from the handler's start to the response", milliseconds),
        "x-compute-tokens": ("tokens computed for the request", count),
        "x-batch-size": ("texts in the largest batch the request was part of", count),
        "x-truncated-inputs": ("texts that were cut to fit the model", count),
    }
    return {
        name: {"description": description, "required": True, "schema": schema}
        for name, (description, schema) in headers.items()
    }


def _texts_limit(schema: dict[str, Any], field: str, max_texts: int) -> dict[str, Any]:
    """The request schema with maxItems on the array form of `field`."""
    for branch in schema["properties"][field]["anyOf"]:
        if branch.get("type") == "array":
            branch["maxItems"] = max_texts
    return schema


def _embedding_route(
    settings: ServerSettings,
    request: dict[str, Any],
    response_model: type,
    summary: str,
) -> dict[str, Any]:
    limit = settings.max_body_bytes
    return {
        "summary": summary,
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "description": f"a JSON object of at most {limit} bytes "
                "(Content-Type application/json or application/*+json)",
                "x-max-body-bytes": limit,
                "content": {JSON_MEDIA_TYPE: {"schema": request}},
            }
        },
        "responses": {
            200: {
                "description": "the embeddings",
                "model": response_model,
                "headers": _timing_headers(),
            },
            400: _error(
                "the body is empty or not valid JSON (or UTF-8), or Content-Length is not a "
                "number; a request the HTTP parser cannot read gets a plain-text 400",
                content=_PLAIN_TEXT_400,
            ),
            408: _error(
                f"the body did not all arrive within {settings.body_timeout_s:g} s "
                "(body_timeout_s; code body_timeout)"
            ),
            413: _error(f"the body is larger than {limit} bytes (code body_too_large)"),
            415: _error("Content-Type is not application/json (code unsupported_media_type)"),
            422: _error(
                "the body breaks the schema (param names the field, e.g. texts[3]); or a text "
                "is longer than the model can take and truncate is false (code text_too_long)"
            ),
            429: _error(
                "the server's queue is full (code queue_full)",
                headers=_retry_after(required=True),
            ),
            500: _error(
                "tokenizing or computing the request's texts failed (code tokenization_error "
                "or inference_error), or " + _INTERNAL_ERROR
            ),
            503: _error(
                "the model is not ready (code not_ready), the server is shutting down "
                "(shutting_down), or an inference worker has died (worker_failed)"
                + _CONNECTION_LIMIT,
                headers=_retry_after(required=False),
                content=_PLAIN_TEXT_503,
            ),
        },
    }


def routes(settings: ServerSettings) -> dict[str, dict[str, Any]]:
    """Keyword arguments of each route's decorator (FastAPI's path operation parameters), with
    the limits of these settings."""
    max_texts = settings.max_texts_per_request
    embed_request = _texts_limit(EmbedRequestDoc.model_json_schema(), "texts", max_texts)
    openai_request = _texts_limit(OpenAIRequestDoc.model_json_schema(), "input", max_texts)
    return {
        "/health": {
            "summary": "Whether the server can answer embedding requests",
            "responses": {
                200: {"description": "ready", "model": HealthDoc},
                500: _error(_INTERNAL_ERROR),
                503: {
                    "description": "not ready: the model is loading or failed to load, the "
                    "server is stopping, or an inference worker has died" + _CONNECTION_LIMIT,
                    "model": HealthDoc,
                    "headers": _retry_after(required=False),
                    "content": _PLAIN_TEXT_503,
                },
            },
        },
        "/info": {
            "summary": "The runtime, the model and the server's settings",
            "responses": {
                200: {"description": "what the server runs", "model": InfoDoc},
                500: _error(_INTERNAL_ERROR),
                503: {
                    "description": "more connections are open than max_connections allows",
                    "content": _PLAIN_TEXT_503,
                },
            },
        },
        "/metrics": {
            "summary": "Prometheus metrics",
            "response_class": MetricsResponse,
            "responses": {
                200: {"description": "Prometheus' text exposition format"},
                500: {
                    "description": _INTERNAL_ERROR,
                    "content": {JSON_MEDIA_TYPE: {"schema": ERROR_REF}},
                },
                503: {
                    "description": "more connections are open than max_connections allows",
                    "content": _PLAIN_TEXT_503,
                },
            },
        },
        "/embed": _embedding_route(
            settings, embed_request, EmbedResponseDoc, "Embed texts (this server's format)"
        ),
        "/v1/embeddings": _embedding_route(
            settings, openai_request, OpenAIResponseDoc, "Embed texts (OpenAI's format)"
        ),
    }


def with_embedding_dim(schema: dict[str, Any], embedding_dim: int | None) -> dict[str, Any]:
    """The OpenAPI document with `dimensions` of /v1/embeddings pinned to the model's embedding
    dimension (a copy; the document as it is while the model has not loaded)."""
    if embedding_dim is None:
        return schema
    schema = copy.deepcopy(schema)
    body = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]
    dimensions = body["content"][JSON_MEDIA_TYPE]["schema"]["properties"]["dimensions"]
    dimensions["anyOf"] = [{"type": "integer", "const": embedding_dim}, {"type": "null"}]
    dimensions["description"] = (
        f"if given, must be {embedding_dim}, the model's embedding dimension "
        "(truncated embeddings are not supported)"
    )
    return schema


def install_openapi(app: FastAPI, embedding_dim: Callable[[], int | None]) -> None:
    """Serve /openapi.json with the loaded model's embedding dimension (see with_embedding_dim);
    `embedding_dim` returns None while no model has loaded."""
    build = app.openapi  # FastAPI's own: builds the document once and keeps it

    def openapi() -> dict[str, Any]:
        return with_embedding_dim(build(), embedding_dim())

    app.openapi = openapi  # type: ignore[method-assign]
