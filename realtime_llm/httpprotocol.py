"""uvicorn's httptools HTTP protocol with the bounds it lacks.

1. Header bytes. httptools buffers a header of any size: a 10 MiB header was answered
   200, and two connections holding unfinished 50 MiB headers doubled the process's
   memory. A request line and headers over `server.max_header_bytes` get 431 and the
   connection is closed.

2. Header time (slowloris). uvicorn times out only idle keep-alive connections, and only
   after a first response: a connection that sent nothing, or a header line every 10 s,
   stayed open for good. A fresh connection now closes after the keep-alive timeout if no
   request starts, and a request's headers must be complete within
   `server.header_timeout_seconds` of its first byte.

3. Abort. A response that the client stopped reading blocks in uvicorn's flow control
   for ever, and closing the transport waits to flush what it holds. The scope's
   extension "realtime_llm.abort" drops the connection at once: the SSE stream of a client
   cut off for falling behind (api/chat.py) ends without holding its buffers.
"""
from __future__ import annotations

import asyncio
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ABORT = "realtime_llm.abort"


class HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


class BoundedHttpProtocol(HttpToolsProtocol):
    max_header_bytes = 65_536
    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True  # between a request's first byte and its end of headers
        self._header_bytes = 0  # bytes received since then (a flood is stopped before it ends)
        self._parsed_bytes = 0  # the request line and headers as parsed (exact, at their end)
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # No request yet: the same grace as an idle keep-alive connection.
        self._header_timer = self.loop.call_later(self.timeout_keep_alive, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's own, with the header bounds around the parser."""
        if self._refused:
            return
        if self._in_headers:
            if self._header_bytes == 0:  # a request begins: its headers are now on the clock
                self._cancel_header_timer()
                self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)
            self._header_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused:  # stopped by our own HeadersTooLarge: the 431 is on its way
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # Headers still unfinished after this read: a flood is refused here, before the
        # parser has buffered much more than the bound.
        if self._in_headers and self._header_bytes > self.max_header_bytes:
            self._refuse_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_bytes = 0
        extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
        extensions[ABORT] = self.transport.abort

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url) + 16  # method, version, spaces, CRLF
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_header_timer()
        if self._parsed_bytes > self.max_header_bytes:
            self._refuse_headers()
            raise HeadersTooLarge()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True  # the next request on this connection starts its count afresh
        self._header_bytes = 0

    def _refuse_headers(self) -> None:
        self._refused = True
        self._cancel_header_timer()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8"
                             b"\r\ncontent-length: 31\r\nconnection: close\r\n\r\nrequest headers are too large.\n")
        self.transport.close()

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


def bounded_http_protocol(max_header_bytes: int, header_timeout: float) -> type[BoundedHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, with this server's bounds."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,),
                {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout})
