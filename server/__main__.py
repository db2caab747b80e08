"""`python -m server`: read EMBENCH_* settings, check the model directory, serve with uvicorn.

Exit codes: 0 after a clean shutdown, 2 for bad settings or model directory, 3 when the model
failed to load."""

from __future__ import annotations

import logging
import os
import sys

from server.config import ConfigError, ServerSettings
from server.model import ModelDirError, resolve_model


def main() -> int:
    # The tokenizer's own thread pool would compete with the runtime for the same cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        settings = ServerSettings.from_env()
    except ConfigError as exc:
        print(f"server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        resolve_model(settings)  # fail fast on a wrong directory, before binding the port
    except ModelDirError as exc:
        print(f"server: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from server.app import create_app

    app = create_app(settings)
    state = app.state.server
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=_best("uvloop", "asyncio"),
        http=_http_protocol(settings),
        limit_concurrency=settings.max_connections,
        lifespan="on",
        access_log=settings.access_log,
        # X-Forwarded-For only matters to the access log; without it, skip the middleware.
        proxy_headers=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s) or None,
        server_header=False,
        log_config=None,
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    state.on_fatal = stop
    server.run()
    if state.status == "failed" or state.error:
        print(f"server: model failed to load: {state.error}", file=sys.stderr)
        return 3
    return 0


def _http_protocol(settings: ServerSettings) -> type | str:
    """httptools with the server's guards (header deadline, cancelling work of clients that
    have gone); h11, without them, only where httptools is not installed."""
    if _best("httptools", "h11") == "h11":
        logging.getLogger("server").warning(
            "httptools is not installed: no header deadline, no cancelling on disconnect"
        )
        return "h11"
    from server.http_protocol import protocol_class

    return protocol_class(settings.header_timeout_s)


def _best(preferred: str, fallback: str) -> str:
    try:
        __import__(preferred)
    except ImportError:
        return fallback
    return preferred


if __name__ == "__main__":
    sys.exit(main())
