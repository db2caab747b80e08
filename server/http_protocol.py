"""uvicorn's httptools protocol with two guards a client cannot get around:

- A header deadline: a connection must finish each request's headers within header_timeout_s
  of connecting (or of the request's first byte), else it is closed. uvicorn only times out
  keep-alive connections between requests, so a slow-loris client sending a header byte now
  and then, or one that connects and sends nothing, would hold its connection forever.
- Work for a client that has gone: when the connection drops before the response is done, the
  request's work is cancelled (the app puts its canceller in the scope under
  CANCEL_ON_DISCONNECT), so a batch no longer computes texts nobody will read.

The body has its own deadline in the app (server.app.read_body), which answers 408.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

CANCEL_ON_DISCONNECT = "embench.cancel_on_disconnect"


def protocol_class(header_timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn's Config(http=...) takes, with this header deadline."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_header_deadline()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            # uvicorn pauses reading while more than 64 KiB of body waits for the app, and
            # resumes only when the app asks for more. The app asks no more once the last
            # chunk is in, so without this a client closing its connection goes unnoticed.
            self.flow.resume_reading()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cancel: Callable[[], Any] | None = cycle.scope.get(CANCEL_ON_DISCONNECT)
                if cancel is not None:
                    cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self.header_deadline = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm_header_deadline(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def _headers_late(self) -> None:
            self.header_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpToolsProtocol
