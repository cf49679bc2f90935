"""What one client may cost the gateway: caps on a request's size and cost, and on slow connections.

uvicorn already closes idle keep-alive connections (timeout_keep_alive) and caps open connections
(limit_concurrency, a 503 beyond), but it has no deadline for a request's headers: a client that sends
them a byte a second holds a connection, and a slot under that cap, for as long as it likes. The
protocol here adds one: a request's headers must arrive within timeout_keep_alive (serving.read_timeout_s)
of its first byte, or of the connection opening; else a 408 and the connection closes. The body's
deadline is the gateway's (pipelines/serving/gateway.py); the caps on records and cost are checked with
the request (pipelines/serving/requests.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pipelines.serving.requests import error_body

__all__ = ["SLOW_HEADERS", "HeaderDeadlineProtocol"]

_SLOW = error_body("the request headers did not arrive within serving.read_timeout_s", "REQUEST_TIMEOUT")
SLOW_HEADERS = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(_SLOW)).encode() + b"\r\nconnection: close\r\n\r\n" + _SLOW)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers (timeout_keep_alive seconds)."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.timeout_keep_alive, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(SLOW_HEADERS)
            self.transport.close()
