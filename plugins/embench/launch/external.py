"""An external server (benchmark.yaml's `external`): the user runs it, so the pipeline only
checks that it answers and hands its address to the load client. Nothing starts, stops,
ships to or probes it; a server of ours or infinity-emb is started by the site instead."""

from __future__ import annotations

from embench.config.schema import ExternalServer
from embench.launch.handle import ServerHandle, wait_healthy

EXTERNAL_HEALTH_TIMEOUT_S = 60.0


def external_handle(server: ExternalServer) -> ServerHandle:
    """The handle of a running external server, once its /health answers 200."""
    url = server.url.rstrip("/")
    wait_healthy(url, EXTERNAL_HEALTH_TIMEOUT_S, lambda: None)
    return ServerHandle(launcher="external", url=url, name=f"external {server.name}")
