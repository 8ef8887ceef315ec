"""Limits on connections, below the app: a client must send a request's headers within
HEADER_SECONDS (from connecting, or from its first byte after a reply on a kept-alive
connection), and at most MAX_CONNECTIONS connections are open at once (the next one is
answered 503 and closed). A client dripping its headers a byte at a time, or opening hundreds
of half-sent requests, holds nothing for long. (The body's time limit is the app's:
`Server.body`.)

uvicorn has neither; `protocol()` returns its HTTP protocol class (httptools' or h11's, the one
uvicorn would pick) with both added.
"""

from __future__ import annotations

import asyncio

HEADER_SECONDS = 10.0
MAX_CONNECTIONS = 64

_BUSY_BODY = (
    b'{"error": {"message": "too many open connections; retry shortly", "type": '
    b'"server_error", "param": null, "code": "too_many_connections"}}'
)
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def protocol(
    header_seconds: float = HEADER_SECONDS, max_connections: int = MAX_CONNECTIONS
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a time limit on request headers and a connection cap."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Limited(AutoHTTPProtocol):  # type: ignore[valid-type, misc]
        def connection_made(self, transport) -> None:
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_after = None
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(BUSY)
                transport.close()
                return
            self._await_head()

        def data_received(self, data: bytes) -> None:
            between = self.cycle is None or self.cycle.response_complete
            if between and (self._head_timer is None or self._head_after is not self.cycle):
                self._await_head()  # the first bytes of the next request on this connection
            super().data_received(data)

        def connection_lost(self, exc) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def _stop_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _await_head(self) -> None:
            """Close the connection unless a request's headers are in within the limit (uvicorn
            starts a new cycle for each request once its headers are parsed)."""
            self._stop_timer()
            self._head_after = self.cycle
            self._head_timer = self.loop.call_later(header_seconds, self._head_late)

        def _head_late(self) -> None:
            self._head_timer = None
            if self.cycle is self._head_after and not self.transport.is_closing():
                self.transport.close()

    return Limited
