"""The upstream client: HTTP/1.1 on asyncio, parsed by httptools (llhttp, in C, the parser
uvicorn serves with), one pool of kept-alive connections per provider.

It replaced aiohttp's client by measurement: per token, aiohttp's protocol, parser
callbacks and StreamReader were about ten Python calls between the socket and the text;
here the body callback cuts the events itself (SSEParser) and the reader waits only when
none is at hand. Both servers under bench.peers' load at once, CPU per token 0.85×.

It does what the providers need and no more: POST a JSON body, read an event stream or an
error's body.
- http and https (the system's CAs, the host name checked); no proxy, no cookies, no
  redirects (a 30x is an answer like any other, which the provider refuses).
- The body is asked for uncompressed (Accept-Encoding: identity); a compressed one is an
  error, not a guess.
- Bounds: the response's head 64 KiB; events not yet taken 64 KiB, past which the socket
  is not read until they are; a refusal's body 4 KiB.
- A connection goes back to the pool only after a whole response that lets it (HTTP/1.1
  keep-alive, no error); an idle one is closed after IDLE_SECONDS, or when the upstream
  closes it.
"""
from __future__ import annotations

import asyncio
import base64
import codecs
import ssl
import time
import urllib.parse

import httptools

from realtime_llm.providers.sse_reader import SSEParser

MAX_HEAD = 65_536  # bytes of a response's status line and headers
MAX_HELD = 65_536  # bytes of body received and not yet taken before reading pauses
IDLE_SECONDS = 15.0  # a pooled connection unused this long is closed rather than reused
MAX_IDLE = 512
MAX_ERROR_BODY = 4096  # bytes of a refusal's body kept (its message is in the first few hundred)


class UpstreamHTTPError(Exception):
    """The exchange with the upstream failed (the provider words it for the user)."""


class ConnectFailed(UpstreamHTTPError):
    """The upstream could not be reached: refused, unknown host, TLS refused."""


class ConnectTimedOut(ConnectFailed):
    """No connection, pooled or new, within the connect timeout."""


class ConnectionBroken(UpstreamHTTPError):
    """The connection closed, or the upstream sent what is not HTTP, before the response's end."""


def header_safe(value: str) -> bool:
    """Whether `value` can go in a header as it is: no CR, LF or NUL (a key holding one
    would add headers of its own)."""
    return not any(c in value for c in "\r\n\0")


class Exchange(asyncio.Protocol):
    """One connection, and the response under way on it."""

    def __init__(self, on_lost: "set[Exchange]") -> None:
        self._loop = asyncio.get_running_loop()
        self._open = on_lost
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.active = False  # a request was sent and its response has not been given up
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._silence = 0.0
        self._heard = 0.0
        self.begin()

    def begin(self) -> None:
        """Ready for the next response."""
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.head_done = self.complete = False
        self.error: Exception | None = None
        self.keep_alive = False
        self._head_bytes = 0  # bytes received before the end of the head (one read at a time)
        self._header_bytes = 0  # the headers' own, as parsed
        self._framed = False  # Content-Length or chunked: not ended by the connection's close
        self._events: list[str] = []
        self._held = 0
        self._paused = False
        self.body = bytearray()  # an error's body (status other than 200)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._sse = SSEParser()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._open.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:  # nothing was asked: the connection is not usable
            self._fail(ConnectionBroken("the upstream sent data outside a response"))
            return
        self._heard = self._loop.time()
        if not self.head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionBroken(f"the upstream's response is not valid HTTP ({exc})"))
            return
        if self.error is not None:  # found by a callback (a compressed body)
            self._fail(self.error)
        elif not self.head_done and self._head_bytes > MAX_HEAD:
            self._fail(ConnectionBroken("the upstream's response headers are too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._open.discard(self)
        if self.head_done and not self.complete and not self._framed and self.error is None:
            self.on_message_complete()  # a body without a length ends with its connection
        elif not self.complete and self.error is None:
            self.error = ConnectionBroken("the upstream closed the connection")
        self._wake()

    # httptools' callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # (a head read whole is counted here)
        if self._header_bytes > MAX_HEAD and self.error is None:
            self.error = ConnectionBroken("the upstream's response headers are too large")
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity") and self.error is None:
            self.error = ConnectionBroken("the upstream compressed its answer, which was asked for uncompressed")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.error is not None:
            return
        if self.status != 200:
            self.body += body[:MAX_ERROR_BODY - len(self.body)]
            self._wake()
            return
        events = self._sse.feed(self._decoder.decode(body))
        if events:
            self._events += events
            self._wake()
        self._held += len(body)
        if self._held > MAX_HELD and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.status == 200:
            self._events += self._sse.feed(self._decoder.decode(b"", final=True)) + self._sse.end()
        self.complete = True
        self._wake()

    # the reader's side

    async def head(self) -> int:
        """The response's status, once its headers have come."""
        while not self.head_done:
            await self._wait()
        if self.error is not None:
            raise self.error
        return self.status

    async def events(self) -> list[str] | None:
        """The `data` of the events come since the last call, waiting for one; None at the
        body's end. Then raises ConnectionBroken, or TimeoutError after `watch`'s silence."""
        while not self._events:
            if self.complete:
                return None
            await self._wait()
        events, self._events, self._held = self._events, [], 0
        self._heard = self._loop.time()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return events

    async def ended(self) -> None:
        """Wait for the body's end (what follows [DONE])."""
        while not self.complete:
            self._events.clear()
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            await self._wait()

    async def error_body(self) -> bytes:
        """The start of a refusal's body (MAX_ERROR_BODY bytes), or all of it."""
        while not self.complete and len(self.body) < MAX_ERROR_BODY:
            await self._wait()
        return bytes(self.body)

    def watch(self, silence: float) -> None:
        """From now on, TimeoutError once `silence` seconds pass with no byte come and none
        taken: one timer per `silence`, not a timeout around every read."""
        self._silence, self._heard = silence, self._loop.time()
        self._watchdog = self._loop.call_at(self._heard + silence, self._check_silence)

    def _check_silence(self) -> None:
        if self._loop.time() - self._heard >= self._silence:
            self._watchdog = None
            self._fail(TimeoutError("the upstream went silent"))
        else:
            self._watchdog = self._loop.call_at(self._heard + self._silence, self._check_silence)

    def done(self) -> None:
        """The response is given up: no more reading, the watchdog stops."""
        self.active = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and not self.lost

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()
        self._wake()


class UpstreamPool:
    """Connections to one upstream URL: at most `max_connections` in use at once, idle ones
    kept for the next request."""

    def __init__(self, url: str, connect_timeout: float, max_connections: int) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc.rpartition("@")[2]  # the credentials go in a header, not in Host
        self._fixed = f"Host: {authority}\r\nUser-Agent: realtime-llm\r\nAccept-Encoding: identity\r\n"
        self.basic_auth = ""
        if parts.username is not None:
            user_pass = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.basic_auth = "Basic " + base64.b64encode(user_pass.encode()).decode()
        self.connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[Exchange] = []
        self._open: set[Exchange] = set()

    async def post(self, headers: dict[str, str], body: bytes) -> Exchange:
        """Send the request on a pooled connection or a new one; the caller gives the
        exchange back with `release`, whatever happens."""
        for name, value in headers.items():
            if not (header_safe(name) and header_safe(value)):
                raise ValueError(f"header {name!r} holds characters a header cannot carry")
        head = "".join((f"POST {self.target} HTTP/1.1\r\n", self._fixed,
                        *(f"{name}: {value}\r\n" for name, value in headers.items()),
                        f"Content-Length: {len(body)}\r\n\r\n")).encode("latin-1")
        deadline = asyncio.get_running_loop().time() + self.connect_timeout  # a free slot, then a connection
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise ConnectTimedOut("no connection to the upstream came free in time") from None
        try:
            exchange = self._pooled() or await self._connect(deadline)
        except BaseException:
            self._slots.release()
            raise
        exchange.active = True
        assert exchange.transport is not None
        exchange.transport.write(head + body)
        return exchange

    def release(self, exchange: Exchange) -> None:
        exchange.done()
        if exchange.reusable and len(self._idle) < MAX_IDLE:
            exchange.idle_since = time.monotonic()
            exchange.begin()
            self._idle.append(exchange)
        elif exchange.transport is not None and not exchange.lost:
            exchange.transport.abort()  # mid-response or unwanted: nothing of it is worth waiting for
        self._slots.release()

    def close(self) -> None:
        for exchange in list(self._open):
            if exchange.transport is not None:
                exchange.transport.abort()
        self._idle.clear()

    def _pooled(self) -> Exchange | None:
        now = time.monotonic()
        while self._idle:
            exchange = self._idle.pop()  # the most recently used: the likeliest still open
            if not exchange.lost and now - exchange.idle_since < IDLE_SECONDS:
                return exchange
            if exchange.transport is not None:
                exchange.transport.abort()
        return None

    async def _connect(self, deadline: float) -> Exchange:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _, exchange = await loop.create_connection(
                    lambda: Exchange(self._open), self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None)
        except TimeoutError:
            raise ConnectTimedOut(f"could not connect to the upstream within {self.connect_timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, unknown host, TLS refused (ssl.SSLError)
            raise ConnectFailed(f"could not connect to the upstream ({type(exc).__name__})") from None
        return exchange
