"""The server's connections: uvicorn with a deadline for each request to arrive whole, and a cap on connections.

A slow or lying client (headers or a body dripped, a Content-Length larger than what it sends, an endless chunk, a
socket that says nothing) would otherwise hold a socket, and whatever reads from it, for as long as it likes:
uvicorn has a keep-alive timeout between requests but no read timeout of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_TEXT = b"request not received in time; connection closed"
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n%s" % (len(_TIMEOUT_TEXT), _TIMEOUT_TEXT))


class DeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with one deadline per request: from its first byte (or the connection's opening)
    the request's headers and body must arrive within `read_timeout_s`, or the client gets a 408 and the connection
    closes. A slow or lying client (a drip of headers, a Content-Length larger than what it sends, an endless chunk)
    thus holds a socket for seconds, not forever; a response, however long it streams, is not limited."""

    read_timeout_s: float = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not None and not self.cycle.more_body and not self.cycle.response_complete:
            self._disarm()  # this request arrived whole

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self.transport.write(TIMEOUT_RESPONSE)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app reads http.disconnect and whatever it sends is dropped
            self.cycle.message_event.set()
        self.transport.close()


def server_config(app: Any, host: str, port: int, read_timeout_s: float = 10.0, max_connections: int = 512,
                  **kwargs: Any) -> uvicorn.Config:
    """uvicorn's configuration for this app (`app.main` and the tests' servers): the request deadline, at most
    `max_connections` open connections (a 503 past it), and keep-alive connections closed after 5 idle seconds."""
    protocol = type("DeadlineProtocol", (DeadlineProtocol,), {"read_timeout_s": read_timeout_s})
    return uvicorn.Config(app, host=host, port=port, http=protocol, limit_concurrency=max_connections,
                          timeout_keep_alive=5, **kwargs)
