"""The HTTP API: FastAPI routes over the dynamic batcher.

GET  /health          503 until the model is loaded and warmed, then 200
GET  /info            runtime, variant, manifest hash, load time, threads, batching, RSS
POST /embed           {"texts": [...], "truncate": true} -> {"embeddings": [[...]], ...}
POST /v1/embeddings   OpenAI-compatible (input string or list; encoding_format float|base64)
GET  /metrics         Prometheus text format

Each embedding response carries TEI-style timing headers, in milliseconds:
x-tokenization-time, x-queue-time, x-inference-time, x-total-time (handler start to response);
and x-compute-tokens, x-batch-size, x-truncated-inputs."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from server import __version__, api_docs, http_protocol
from server.batcher import (
    Batcher,
    EmbedResult,
    InferenceError,
    QueueFull,
    ShuttingDown,
    TextTooLong,
    TokenizationError,
    WorkerFailed,
)
from server.config import ServerSettings
from server.metrics import ServerMetrics
from server.model import LoadedModel, load_model, warm_up
from server.protocol import (
    JSON_MEDIA_TYPE,
    ApiError,
    check_content_type,
    embed_response,
    openai_response,
    parse_embed,
    parse_json,
    parse_openai,
)

log = logging.getLogger("server")

Loader = Callable[[ServerSettings], LoadedModel]
Status = Literal["loading", "ready", "failed", "stopping"]


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics
    loader: Loader
    status: Status = "loading"
    error: str | None = None
    model: LoadedModel | None = None
    batcher: Batcher | None = None
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    on_fatal: Callable[[], None] | None = None  # set by __main__: stop the server

    @property
    def model_name(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        return self.model.spec.model_id if self.model else "unknown"


def _json(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers=headers, media_type=JSON_MEDIA_TYPE)


def _error_response(err: ApiError) -> Response:
    return Response(err.body(), err.status, headers=err.headers, media_type=JSON_MEDIA_TYPE)


def process_rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed `limit`: from Content-Length
    before reading anything, else while streaming, without holding more than `limit` bytes;
    and (408) when it has not all arrived within `timeout_s`, so a slow sender cannot hold a
    connection and its buffers for long."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, limit)
    except TimeoutError:
        raise ApiError(
            408,
            f"the body did not arrive within {timeout_s:g} s",
            param="body",
            code="body_timeout",
            headers={"Connection": "close"},
        ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header", param="content-length") from None
        if size > limit:
            raise _body_too_large(f"the body has {size} bytes; at most {limit} are allowed")
    # ASGI messages straight from receive(): a small body is one message.
    chunks: list[bytes] = []
    received = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(chunk)
        if received > limit:
            raise _body_too_large(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _body_too_large(message: str) -> ApiError:
    return ApiError(
        413, message, param="body", code="body_too_large", headers={"Connection": "close"}
    )


def create_app(settings: ServerSettings, *, loader: Loader | None = None) -> FastAPI:
    """The ASGI app. The model loads in the background after startup (/health says when)."""
    metrics = ServerMetrics()
    state = ServerState(settings=settings, metrics=metrics, loader=loader or load_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(state), name="load-model")
        try:
            yield
        finally:
            state.status = "stopping"
            metrics.ready.set(0)
            if not loading.done():
                loading.cancel()
            if state.batcher is not None:
                finished = await state.batcher.stop(settings.graceful_timeout_s)
                log.info("inference worker stopped (%s)", "drained" if finished else "timed out")

    app = EmbenchApp(
        title="embench inference server",
        version=__version__,
        lifespan=lifespan,
        description=__doc__,
    )
    app.state.server = state
    docs = api_docs.routes(settings)
    # The document states the loaded model's dimension (the only value `dimensions` takes).
    api_docs.install_openapi(
        app, lambda: state.model.embedder.embedding_dim if state.model is not None else None
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        err = ApiError(exc.status_code, str(exc.detail), param=None, headers=exc.headers)
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        return _error_response(ApiError(422, str(first.get("msg")), param=param))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(ApiError(500, "internal server error", type="server_error"))

    @app.get("/health", **docs["/health"])
    async def health() -> Response:
        failure = _failure(state)
        if state.status == "ready" and failure is None:
            return _json({"status": "ok"})
        body: dict[str, object] = {"status": "failed" if failure else state.status}
        if failure or state.error:
            body["error"] = failure or state.error
        return _json(body, 503, headers={"Retry-After": "1"})

    @app.get("/info", **docs["/info"])
    async def info() -> Response:
        return _json(_info(state))

    @app.get("/metrics", **docs["/metrics"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/embed", **docs["/embed"])
    async def embed(request: Request) -> Response:
        async def handle(payload: object) -> Response:
            parsed = parse_embed(payload, settings.max_texts_per_request)
            result = await _compute(
                state, request.scope, parsed.texts, "texts", truncate=parsed.truncate
            )
            body = embed_response(
                result.vectors, state.model_name, result.prompt_tokens, result.truncated
            )
            return _embedding_response(body, result, handler_started)

        handler_started = time.perf_counter()
        return await _handle(state, request, "/embed", handle, handler_started)

    @app.post("/v1/embeddings", **docs["/v1/embeddings"])
    async def openai_embeddings(request: Request) -> Response:
        async def handle(payload: object) -> Response:
            assert state.model is not None
            parsed = parse_openai(
                payload, settings.max_texts_per_request, state.model.embedder.embedding_dim
            )
            result = await _compute(state, request.scope, parsed.texts, "input", truncate=True)
            body = openai_response(
                result.vectors,
                state.model_name,
                result.prompt_tokens,
                parsed.encoding_format,
                result.truncated,
            )
            return _embedding_response(body, result, handler_started)

        handler_started = time.perf_counter()
        return await _handle(state, request, "/v1/embeddings", handle, handler_started)

    return app


class EmbenchApp(FastAPI):
    """FastAPI, plus a fast path: a POST goes straight to its route's handler, skipping the
    middleware stack, routing and dependency resolution (bench/asgi_fast_path.py measures what
    that saves). The table is made from the declared routes, so each route is declared once;
    every POST handler here takes the raw Request and turns every error into a JSON response
    itself, which is what lets it skip the rest."""

    _fast_routes: dict[str, Callable[[Request], Awaitable[Response]]] | None = None
    fast_path = True  # bench/asgi_fast_path.py turns it off to compare

    def fast_routes(self) -> dict[str, Callable[[Request], Awaitable[Response]]]:
        if self._fast_routes is None:
            self._fast_routes = {
                route.path: route.endpoint
                for route in self.routes
                if isinstance(route, APIRoute) and route.methods == {"POST"}
            }
        return self._fast_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_path and scope["type"] == "http" and scope["method"] == "POST":
            handler = self.fast_routes().get(scope["path"])
            if handler is not None:
                scope["app"] = self
                request = Request(scope, receive, send)
                try:
                    response = await handler(request)
                except ClientDisconnect:
                    return  # nobody to answer
                except Exception:
                    log.exception("unhandled error on POST %s", scope["path"])
                    response = _error_response(
                        ApiError(500, "internal server error", type="server_error")
                    )
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _handle(
    state: ServerState,
    request: Request,
    endpoint: str,
    handle: Callable[[object], Awaitable[Response]],
    started: float,
) -> Response:
    metrics = state.metrics
    status = 500
    try:
        if state.status != "ready":
            raise ApiError(
                503,
                f"the model is {state.status}"
                if state.status != "failed"
                else "the model failed to load",
                type="server_error",
                code="not_ready",
                headers={"Retry-After": "1"},
            )
        check_content_type(request.headers.get("content-type"))
        settings = state.settings
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        response: Response = await handle(parse_json(body))
        status = response.status_code
        return response
    except ClientDisconnect:
        status = 499  # the client went away before its answer (nginx's convention)
        metrics.disconnected.inc()
        raise
    except ApiError as err:
        status = err.status
        metrics.errors.labels(endpoint, err.code or err.type).inc()
        if status == 429:
            metrics.rejected.inc()
        return _error_response(err)
    finally:
        metrics.request_done(endpoint, status, time.perf_counter() - started)


async def _compute(
    state: ServerState, scope: Scope, texts: list[str], param: str, *, truncate: bool
) -> EmbedResult:
    batcher = state.batcher
    assert batcher is not None
    try:
        job = batcher.admit(texts, truncate=truncate)
        # The connection's protocol (server.http_protocol) cancels this if the client goes.
        scope[http_protocol.CANCEL_ON_DISCONNECT] = job.future.cancel
        try:
            result = await batcher.wait(job)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the server is stopping this task, not the client
            raise ClientDisconnect() from None
    except QueueFull as exc:
        raise _queue_full(exc) from None
    except WorkerFailed as exc:
        raise ApiError(
            503, str(exc), type="server_error", code="worker_failed", headers={"Retry-After": "5"}
        ) from None
    except ShuttingDown:
        raise ApiError(
            503,
            "the server is shutting down",
            type="server_error",
            code="shutting_down",
            headers={"Retry-After": "1"},
        ) from None
    except TextTooLong as exc:
        raise ApiError(
            422,
            f"'{param}[{exc.index}]' {exc}, and truncate is false",
            param=f"{param}[{exc.index}]",
            code="text_too_long",
        ) from None
    except TokenizationError as exc:
        raise ApiError(
            500, f"tokenization failed: {exc}", type="server_error", code="tokenization_error"
        ) from None
    except InferenceError as exc:
        raise ApiError(
            500, f"inference failed: {exc}", type="server_error", code="inference_error"
        ) from None
    metrics = state.metrics
    metrics.tokenization_seconds.observe(result.tokenization_s)
    metrics.queue_seconds.observe(result.queue_s)
    truncated = result.truncated.count(True)
    if truncated:
        metrics.truncated.inc(truncated)
    return result


def _queue_full(exc: QueueFull) -> ApiError:
    return ApiError(
        429,
        f"server busy: {exc.waiting} {exc.what} are waiting (limit {exc.limit}); "
        f"retry after {exc.retry_after_s} s",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": str(exc.retry_after_s)},
    )


def _failure(state: ServerState) -> str | None:
    """Why a loaded server cannot answer (a dead inference worker), or None."""
    return state.batcher.failure if state.batcher is not None else None


class _EncodedResponse(Response):
    """A 200 whose headers are encoded already: the embedding endpoints' hot path skips
    Starlette's per-header encoding."""

    def __init__(self, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = raw_headers


_JSON_CONTENT_TYPE = JSON_MEDIA_TYPE.encode()


def _embedding_response(body: bytes, result: EmbedResult, started: float) -> Response:
    total_ms = (time.perf_counter() - started) * 1e3
    return _EncodedResponse(
        body,
        [
            (b"content-length", b"%d" % len(body)),
            (b"content-type", _JSON_CONTENT_TYPE),
            (b"x-tokenization-time", b"%.3f" % (result.tokenization_s * 1e3)),
            (b"x-queue-time", b"%.3f" % (result.queue_s * 1e3)),
            (b"x-inference-time", b"%.3f" % (result.inference_s * 1e3)),
            (b"x-total-time", b"%.3f" % total_ms),
            (b"x-compute-tokens", b"%d" % result.prompt_tokens),
            (b"x-batch-size", b"%d" % result.batch_texts),
            (b"x-truncated-inputs", b"%d" % result.truncated.count(True)),
        ],
    )


async def _load(state: ServerState) -> None:
    settings = state.settings
    for name in settings.ignored():
        log.warning(
            "%s=%s has no effect on the %s runtime: ignored",
            settings.env_name(name),
            getattr(settings, name),
            settings.runtime,
        )
    try:
        model = await asyncio.to_thread(state.loader, settings)
        if settings.warmup:
            model.warmup_s = await asyncio.to_thread(warm_up, model.embedder)
        batcher = Batcher(
            model.embedder.embed_tokenized,
            model.embedder.tokenize,
            max_seq_length=model.embedder.max_seq_length,
            tokenizer_threads=settings.tokenizer_threads,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_texts=settings.max_batch_texts,
            max_queue=settings.max_queue,
            max_queue_bytes=settings.max_queue_bytes,
            max_batch_wait_s=settings.max_batch_wait_ms / 1e3,
            on_batch=state.metrics.observe_batch,
            workers=settings.workers,
        )
        batcher.start()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("loading the model failed")
        state.status = "failed"
        state.error = f"{type(exc).__name__}: {exc}"
        if state.on_fatal is not None:
            state.on_fatal()
        return
    state.model = model
    state.batcher = batcher
    state.metrics.track_queue(lambda: batcher.queued_texts, lambda: batcher.inflight_requests)
    state.metrics.model_load_seconds.set(model.load_s)
    spec = model.spec
    state.metrics.info.info(
        {
            "runtime": spec.runtime,
            "runtime_version": model.embedder.runtime_version,
            "model": spec.model_id,
            "variant": spec.variant,
            "manifest_sha256": spec.manifest_sha256 or "",
            "version": __version__,
        }
    )
    if state.status == "loading":
        state.status = "ready"
        state.ready_at = time.time()
        state.metrics.ready.set(1)
        log.info(
            "ready: %s %s on %s %s (load %.0f ms, warm-up %.0f ms, %d worker(s) x %d threads)",
            spec.model_id,
            spec.variant,
            spec.runtime,
            model.embedder.runtime_version,
            model.load_s * 1e3,
            model.warmup_s * 1e3,
            settings.workers,
            settings.threads,
        )


def _info(state: ServerState) -> dict[str, object]:
    settings = state.settings
    info: dict[str, object] = {
        "status": state.status,
        "server_version": __version__,
        "python": platform.python_version(),
        "pid": os.getpid(),
        "uptime_s": round(time.time() - state.started_at, 3),
        "runtime": settings.runtime,
        "threads": settings.threads,
        "workers": settings.workers,
        "spinning": settings.spinning,
        # null where the runtime has no such option (ignored) or, for inter-op threads, where
        # it is left at the runtime's default
        "inter_op_threads": settings.applied("inter_op_threads"),
        "graph_optimization_level": settings.applied("graph_optimization_level"),
        "batching": {
            "max_batch_tokens": settings.max_batch_tokens,
            "max_batch_texts": settings.max_batch_texts,
            "max_batch_wait_ms": settings.max_batch_wait_ms,
            "max_texts_per_request": settings.max_texts_per_request,
            "max_queue": settings.max_queue,
            "max_body_bytes": settings.max_body_bytes,
            "tokenizer_threads": settings.tokenizer_threads,
        },
        "process_rss_bytes": process_rss_bytes(),
    }
    if state.error:
        info["error"] = state.error
    model = state.model
    if model is not None:
        spec = model.spec
        embedder = model.embedder
        info.update(
            {
                "runtime_version": embedder.runtime_version,
                "model": state.model_name,
                "model_id": spec.model_id,
                "variant": spec.variant,
                "model_dir": str(spec.load_dir),
                "manifest_sha256": spec.manifest_sha256,
                "embedding_dim": embedder.embedding_dim,
                "max_seq_length": embedder.max_seq_length,
                "model_load_ms": round(model.load_s * 1e3, 1),
                "warmup_ms": round(model.warmup_s * 1e3, 1),
                "library_versions": model.library_versions,
            }
        )
        if spec.manifest is not None:
            info["model_info"] = spec.manifest.model.model_dump()
            if spec.manifest.parity is not None:
                info["parity"] = spec.manifest.parity.model_dump()
    if state.batcher is not None:
        info["queue"] = {
            "queued_texts": state.batcher.queued_texts,
            "inflight_requests": state.batcher.inflight_requests,
        }
    return info
