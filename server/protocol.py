"""Request parsing and response encoding of the HTTP API.

Bodies are parsed by hand (orjson, then plain checks) rather than by FastAPI's validation, for
speed and so that every error names the exact field, e.g. "input[3]". Errors use OpenAI's
envelope: {"error": {"message", "type", "param", "code"}}, so OpenAI clients show the message.
The pydantic models below only document the API in /openapi.json."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

JSON_MEDIA_TYPE = "application/json"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


# ---- body ---------------------------------------------------------------------------------------
def check_content_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise ApiError(
            415,
            f"Content-Type must be application/json, got {content_type or 'none'!r}",
            param="content-type",
            code="unsupported_media_type",
        )


def parse_json(body: bytes) -> object:
    if not body:
        raise ApiError(400, "the request body is empty; expected a JSON object", param="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON: {exc}", param="body", code="invalid_json") from None


def _object(body: object) -> dict[str, object]:
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object, got {_kind(body)}", param="body")
    return body


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_texts(value: object, name: str, max_texts: int) -> list[str]:
    """A non-empty string or a non-empty list of non-empty strings -> list of texts."""
    if isinstance(value, str):
        texts = [value]
        if not value:
            raise ApiError(422, f"'{name}' must not be an empty string", param=name)
        return texts
    if not isinstance(value, list):
        raise ApiError(
            422, f"'{name}' must be a string or an array of strings, got {_kind(value)}", param=name
        )
    if not value:
        raise ApiError(422, f"'{name}' must not be an empty array", param=name)
    if len(value) > max_texts:
        raise ApiError(
            422,
            f"'{name}' has {len(value)} texts; at most {max_texts} are allowed per request",
            param=name,
            code="too_many_texts",
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            hint = (
                " (token arrays are not supported; send text)"
                if isinstance(item, int | list) and not isinstance(item, bool)
                else ""
            )
            raise ApiError(
                422,
                f"'{name}[{i}]' must be a string, got {_kind(item)}{hint}",
                param=f"{name}[{i}]",
            )
        if not item:
            raise ApiError(422, f"'{name}[{i}]' must not be an empty string", param=f"{name}[{i}]")
    return value


# ---- POST /embed --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedRequest:
    texts: list[str]
    truncate: bool = True


EMBED_FIELDS = frozenset({"texts", "truncate"})


def parse_embed(body: object, max_texts: int) -> EmbedRequest:
    data = _object(body)
    unknown = sorted(set(data) - EMBED_FIELDS)
    if unknown:
        raise ApiError(
            422,
            f"unknown field '{unknown[0]}'; expected: {', '.join(sorted(EMBED_FIELDS))}",
            param=unknown[0],
        )
    if "texts" not in data:
        raise ApiError(422, "'texts' is required", param="texts")
    texts = check_texts(data["texts"], "texts", max_texts)
    truncate = data.get("truncate", True)
    if not isinstance(truncate, bool):
        raise ApiError(
            422, f"'truncate' must be a boolean, got {_kind(truncate)}", param="truncate"
        )
    return EmbedRequest(texts=texts, truncate=truncate)


# ---- POST /v1/embeddings (OpenAI) ----------------------------------------------------------------
@dataclass(frozen=True)
class OpenAIRequest:
    texts: list[str]
    model: str | None
    encoding_format: Literal["float", "base64"]


def parse_openai(body: object, max_texts: int, embedding_dim: int) -> OpenAIRequest:
    data = _object(body)
    if "input" not in data:
        raise ApiError(422, "'input' is required", param="input")
    texts = check_texts(data["input"], "input", max_texts)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, f"'model' must be a string, got {_kind(model)}", param="model")
    encoding = data.get("encoding_format")
    if encoding is None:  # absent or null; any other falsy value is as wrong as "hex"
        encoding = "float"
    if encoding not in ("float", "base64"):
        raise ApiError(
            422,
            f"'encoding_format' must be 'float' or 'base64', got {encoding!r}",
            param="encoding_format",
        )
    dimensions = data.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or dimensions != embedding_dim
    ):
        raise ApiError(
            422,
            f"'dimensions' must be {embedding_dim} for this model (no truncated embeddings), "
            f"got {dimensions!r}",
            param="dimensions",
        )
    return OpenAIRequest(texts=texts, model=model, encoding_format=encoding)


def openai_response(
    vectors: np.ndarray,
    model: str,
    prompt_tokens: int,
    encoding_format: str,
    truncated: list[bool],
) -> bytes:
    data: list[dict[str, object]] = []
    if encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        for i in range(len(little)):
            item: dict[str, object] = {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(little[i].tobytes()).decode("ascii"),
            }
            if truncated[i]:
                item["truncated"] = True
            data.append(item)
    else:
        for i in range(len(vectors)):
            item = {"object": "embedding", "index": i, "embedding": vectors[i]}
            if truncated[i]:
                item["truncated"] = True
            data.append(item)
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def embed_response(
    vectors: np.ndarray, model: str, prompt_tokens: int, truncated: list[bool]
) -> bytes:
    return orjson.dumps(
        {
            "embeddings": vectors,
            "model": model,
            "dim": int(vectors.shape[1]),
            "truncated": truncated,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


# ---- documentation-only models (OpenAPI) ---------------------------------------------------------
# They state what the hand parser above enforces; server/api_docs.py adds the limits that come
# from the settings (maxItems) or from the loaded model (dimensions) and puts them in the routes.
NonEmptyText = Annotated[str, Field(min_length=1)]
Texts = NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)]


class EmbedRequestDoc(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        title="EmbedRequest",
        json_schema_extra={"examples": [{"texts": ["a first text", "a second"]}]},
    )

    texts: Texts = Field(
        description="a non-empty text, or a non-empty array of non-empty texts "
        "(at most max_texts_per_request)"
    )
    truncate: bool = Field(
        default=True,
        description="cut texts beyond the model's max_seq_length; false: such a text gets 422 "
        "(code text_too_long)",
    )


class OpenAIRequestDoc(BaseModel):
    # Other properties are accepted and ignored, as OpenAI's API does.
    model_config = ConfigDict(
        title="OpenAIEmbeddingRequest",
        json_schema_extra={"examples": [{"input": "a text", "encoding_format": "float"}]},
    )

    input: Texts = Field(
        description="a non-empty text, or a non-empty array of non-empty texts "
        "(at most max_texts_per_request); token arrays are not supported"
    )
    model: str | None = Field(
        default=None, description="accepted for OpenAI compatibility; the server's model answers"
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        default="float",
        description="float: arrays of numbers; base64: little-endian float32, base64-encoded",
    )
    dimensions: int | None = Field(
        default=None,
        description="if given, must equal the model's embedding dimension (see /info); "
        "truncated embeddings are not supported",
    )
    user: Any = Field(default=None, description="accepted for OpenAI compatibility and ignored")


class ErrorDetailDoc(BaseModel):
    model_config = ConfigDict(title="ErrorDetail")

    message: str = Field(description="what is wrong, naming the field, e.g. 'texts[3]'")
    type: str = Field(
        description="invalid_request_error, rate_limit_error or server_error (OpenAI's types)"
    )
    param: str | None = Field(description="the field or header at fault, e.g. 'texts[3]'")
    code: str | None = Field(
        description="a machine-readable reason where there is one, e.g. invalid_json, "
        "body_too_large, body_timeout, unsupported_media_type, too_many_texts, "
        "text_too_long, queue_full, not_ready, shutting_down, worker_failed, "
        "tokenization_error, inference_error"
    )


class ErrorDoc(BaseModel):
    """Every error the server itself answers, in OpenAI's envelope."""

    model_config = ConfigDict(title="Error")

    error: ErrorDetailDoc


class UsageDoc(BaseModel):
    model_config = ConfigDict(title="Usage")

    prompt_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class EmbedResponseDoc(BaseModel):
    model_config = ConfigDict(title="EmbedResponse")

    embeddings: list[list[float]] = Field(description="one vector per text, in order")
    model: str
    dim: int = Field(ge=1, description="the length of each vector")
    truncated: list[bool] = Field(description="per text: whether it was cut to fit the model")
    usage: UsageDoc


class OpenAIEmbeddingDoc(BaseModel):
    model_config = ConfigDict(title="OpenAIEmbedding")

    object: Literal["embedding"]
    index: int = Field(ge=0)
    embedding: list[float] | str = Field(
        description="an array of numbers (encoding_format float) or a base64 string of "
        "little-endian float32 (encoding_format base64)"
    )
    truncated: bool = Field(
        default=False, description="present, and true, only where the text was cut"
    )


class OpenAIResponseDoc(BaseModel):
    model_config = ConfigDict(title="OpenAIEmbeddingResponse")

    object: Literal["list"]
    data: list[OpenAIEmbeddingDoc]
    model: str
    usage: UsageDoc


class HealthDoc(BaseModel):
    model_config = ConfigDict(title="Health")

    status: str = Field(
        description="ok (200); else loading, failed or stopping (503)",
    )
    error: str | None = Field(
        default=None, description="why the model failed to load or the server cannot answer"
    )


class BatchingDoc(BaseModel):
    model_config = ConfigDict(title="Batching", extra="allow")

    max_batch_tokens: int
    max_batch_texts: int
    max_batch_wait_ms: float
    max_texts_per_request: int
    max_queue: int
    max_body_bytes: int
    tokenizer_threads: int


class InfoDoc(BaseModel):
    """What the server runs. The model's fields are there once it has loaded."""

    model_config = ConfigDict(title="Info", extra="allow")

    status: str = Field(description="loading, ready, failed or stopping")
    server_version: str
    python: str
    pid: int
    uptime_s: float
    runtime: str
    threads: int
    workers: int
    spinning: bool
    inter_op_threads: int | None
    graph_optimization_level: str | None
    batching: BatchingDoc
    process_rss_bytes: int
    error: str | None = None
    model: str | None = Field(default=None, description="the name responses carry")
    model_id: str | None = None
    variant: str | None = None
    runtime_version: str | None = None
    embedding_dim: int | None = None
    max_seq_length: int | None = None
