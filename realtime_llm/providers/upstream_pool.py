"""The upstream client's pool: kept-alive connections (upstream_http.Exchange) to one URL.

- http and https (the system's CAs, the host name checked); no proxy, no cookies, no
  redirects (a 30x is an answer like any other, which the provider refuses).
- A connection goes back to the pool only after a whole response that lets it (HTTP/1.1
  keep-alive, no error, nothing past its end); an idle one is closed after IDLE_SECONDS,
  or when the upstream closes it.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import ssl
import time
import urllib.parse

from realtime_llm.providers.upstream_http import ConnectFailed, ConnectTimedOut, Exchange, header_safe

IDLE_SECONDS = 15.0  # a pooled connection unused this long is closed rather than reused
MAX_IDLE = 512


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
        path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        self.target = path + (f"?{urllib.parse.quote(parts.query, safe='=&%+')}" if parts.query else "")
        # Host: not the credentials; a name beyond ASCII as IDNA, an IPv6 address bracketed
        host = f"[{self.host}]" if ":" in self.host else self.host.encode("idna").decode("ascii")
        authority = host + (f":{parts.port}" if parts.port else "")
        self._fixed = f"Host: {authority}\r\nUser-Agent: realtime-llm\r\nAccept-Encoding: identity\r\n"
        self.basic_auth = ""
        if parts.username is not None:
            user_pass = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.basic_auth = "Basic " + base64.b64encode(user_pass.encode()).decode()
        self.connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: collections.deque[Exchange] = collections.deque()  # the newest on the right
        self._open: set[Exchange] = set()
        self._closed = False

    async def post(self, headers: dict[str, str], body: bytes) -> Exchange:
        """Send the request on a pooled connection or a new one; the caller gives the
        exchange back with `release`, whatever happens."""
        if self._closed:
            raise ConnectFailed("the provider's client is closed")
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
            if self._closed:  # closed while this waited
                self._discard(exchange)
                raise ConnectFailed("the provider's client is closed")
            if exchange.transport is None:  # (its connection ended: not expected between the two)
                raise ConnectFailed("the connection to the upstream closed before the request")
        except BaseException:
            self._slots.release()
            raise
        exchange.active = True
        exchange.transport.write(head + body)
        return exchange

    def release(self, exchange: Exchange) -> None:
        exchange.done()
        now = time.monotonic()
        while self._idle and (not self._usable(self._idle[0], now) or len(self._idle) >= MAX_IDLE):
            self._discard(self._idle.popleft())  # the oldest first
        if exchange.reusable and not self._closed:
            exchange.idle_since = now
            exchange.begin()
            self._idle.append(exchange)
        else:
            self._discard(exchange)  # mid-response or unwanted: nothing of it is worth waiting for
        self._slots.release()

    def close(self) -> None:
        self._closed = True
        for exchange in list(self._open):
            self._discard(exchange)
        self._idle.clear()

    def _pooled(self) -> Exchange | None:
        now = time.monotonic()
        while self._idle:
            exchange = self._idle.pop()  # the most recently used: the likeliest still open
            if self._usable(exchange, now):
                return exchange
            self._discard(exchange)
        return None

    @staticmethod
    def _usable(exchange: Exchange, now: float) -> bool:
        return (not exchange.lost and exchange.error is None and now - exchange.idle_since < IDLE_SECONDS
                and exchange.transport is not None and not exchange.transport.is_closing())

    @staticmethod
    def _discard(exchange: Exchange) -> None:
        if exchange.transport is not None and not exchange.lost:
            exchange.transport.abort()

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
