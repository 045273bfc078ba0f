"""One pipelined connection for the process's Lua scripts on a single Redis: the broker's
publishes, the generation locks, the history cache, rate limits, tickets and seats.

redis-py's pool takes a connection, checks it and gives it back around every call: 82-123
µs of this process's CPU for a publish script with 50 callers at once, against 7-10 µs
when every call is written to one connection without waiting for the answers before it,
the calls of one turn of the event loop in one write (`python -m bench.redis_calls`, 3
runs on a slow night: 0.08-0.10x).
Redis answers a connection's commands in order, so the answers are matched to the calls
in order.

The oldest call still waiting is given the socket timeout: past it, or when the
connection is lost, every call waiting on the connection fails (each may or may not have
run, as with redis-py; none is sent again, so no event goes out twice) and the next call
connects anew. Plain TCP and unix sockets; TLS (rediss://) and a Redis Cluster keep
redis-py's connections (redisclient.py).
"""
from __future__ import annotations

import asyncio
import collections
import socket
import time
from typing import Any, Iterable, Sequence, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Bounds of a connection Redis does not keep up with: past them, a call fails at once.
MAX_WAITING = 10_000  # calls waiting for their answers
MAX_UNSENT_BYTES = 16 * 2**20  # written but not yet taken by the socket (one call alone may be larger)
HEALTH_SECONDS = 30.0  # an idle connection is pinged this often: one dropped silently fails then, not under load


class _Link(asyncio.Protocol):
    """One connection: calls written in order, answers matched to them in order."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.outgoing: list[bytes] = []
        self.failure: Exception | None = None
        self._loop = asyncio.get_running_loop()
        self._watch: asyncio.TimerHandle | None = None  # the timeout of the oldest call waiting
        self._health: asyncio.TimerHandle | None = None  # the idle ping's
        self._last_sent = time.monotonic()
        self._unsent = 0  # bytes in `outgoing`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self._health = self._loop.call_later(HEALTH_SECONDS, self._ping_if_idle)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:
                self.fail(RedisConnectionError("an answer from Redis that no call asked for"))
                return
            future, _ = self.waiting.popleft()
            if not future.done():  # its caller may have been cancelled
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("the connection to Redis was lost"))

    def send(self, args: Sequence[Any]) -> asyncio.Future[Any]:
        if self.failure is not None:
            raise RedisConnectionError(str(self.failure))
        if len(self.waiting) >= MAX_WAITING:
            raise RedisConnectionError("too many Redis calls waiting")
        assert self.transport is not None
        unsent = self._unsent + self.transport.get_write_buffer_size()
        if unsent > MAX_UNSENT_BYTES:
            raise RedisConnectionError("Redis is not reading what is written to it")
        if not self.outgoing:
            self._loop.call_soon(self._flush)
        command = hiredis.pack_command(tuple(args))
        self.outgoing.append(command)
        self._unsent += len(command)
        future = self._loop.create_future()
        self._last_sent = time.monotonic()
        self.waiting.append((future, self._last_sent))
        if self._watch is None:
            self._watch = self._loop.call_later(self.timeout, self._check)
        return future

    def _flush(self) -> None:
        if self.failure is None and self.transport is not None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()
        self._unsent = 0

    def _ping_if_idle(self) -> None:
        if time.monotonic() - self._last_sent >= HEALTH_SECONDS:
            self.send(("PING",)).add_done_callback(_retrieved)  # its answer matters only if it never comes
        self._health = self._loop.call_later(HEALTH_SECONDS, self._ping_if_idle)

    def _check(self) -> None:
        """The oldest call's time is up, or the timer moves on to the next oldest."""
        self._watch = None
        if not self.waiting:
            return
        due = self.waiting[0][1] + self.timeout
        if time.monotonic() >= due:
            self.fail(RedisTimeoutError("Redis did not answer in time"))
        else:
            self._watch = self._loop.call_later(due - time.monotonic(), self._check)

    def fail(self, error: Exception) -> None:
        """End the connection: every call waiting on it fails with `error`."""
        if self.failure is not None:
            return
        self.failure = error
        if self._health is not None:
            self._health.cancel()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.transport is not None:  # at once: what was not sent is not sent later
            self.transport.abort()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(type(error)(str(error)))


class PipelinedConnection:
    """Calls on one connection at a time, made when first needed and again after a failure."""

    def __init__(self, url: str, timeout: float) -> None:
        options = parse_url(url)
        self.path: str | None = options.get("path")
        self.host: str = options.get("host", "localhost")
        self.port = int(options.get("port", 6379))
        self.db = int(options.get("db", 0))
        self.username: str | None = options.get("username")
        self.password: str | None = options.get("password")
        self.timeout = timeout
        self._link: _Link | None = None
        self._connecting: asyncio.Task[_Link] | None = None
        self._closed = False

    @staticmethod
    def supports(url: str) -> bool:
        return url.startswith(("redis://", "unix://"))

    async def call(self, *args: Any) -> Any:
        """One command's answer; an error answer is returned, not raised (PipelinedScript)."""
        link = self._link
        if link is None or link.failure is not None:
            link = await self._connected()
        return await link.send(args)

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._link is not None:
            self._link.fail(RedisConnectionError("closed"))

    async def _connected(self) -> _Link:
        if self._closed:
            raise RedisConnectionError("closed")
        if self._connecting is None:
            connecting = asyncio.ensure_future(self._connect())
            self._connecting = connecting

            def done(task: asyncio.Task[_Link]) -> None:
                if self._connecting is task:
                    self._connecting = None
                _retrieved(task)  # each waiter has it raised anyway

            connecting.add_done_callback(done)
        try:
            return await asyncio.shield(self._connecting)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # this caller was cancelled
                raise
            raise RedisConnectionError("closed") from None  # close() cancelled the connect
        except Exception as exc:  # one exception for each waiter (a shared one gathers their tracebacks)
            raise type(exc)(*exc.args) from None

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                if self.path:
                    _, link = await loop.create_unix_connection(lambda: _Link(self.timeout), self.path)
                else:
                    transport, link = await loop.create_connection(lambda: _Link(self.timeout), self.host, self.port)
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                try:
                    if self.password:
                        auth = (self.username, self.password) if self.username else (self.password,)
                        _raise(await link.send(("AUTH", *auth)))
                    if self.db:
                        _raise(await link.send(("SELECT", self.db)))
                except BaseException:
                    link.fail(RedisConnectionError("connection set-up failed"))
                    raise
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {type(exc).__name__}") from None
        if self._closed:
            link.fail(RedisConnectionError("closed"))
            raise RedisConnectionError("closed")
        self._link = link
        return link


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _raise(reply: Any) -> Any:
    if isinstance(reply, ResponseError):
        raise reply
    return reply


class PipelinedScript(AsyncScript):
    """A Lua script called as redis-py's are, `await script(keys=[...], args=[...])`, on the
    pipelined connection, by its SHA1; a Redis that does not know it (restarted, flushed)
    is sent the source, which loads it."""

    def __init__(self, client: aioredis.Redis, source: str, connection: PipelinedConnection) -> None:
        super().__init__(client, source)
        self.connection = connection
        self.source = source.encode()

    async def __call__(self, keys: Sequence[Any] | None = None, args: Iterable[Any] | None = None,
                       client: Any = None) -> Any:
        if client is not None:  # in a pipeline of redis-py's: as redis-py does
            return await super().__call__(keys, args, client)
        keys, args = keys or (), tuple(args or ())
        reply = await self.connection.call("EVALSHA", self.sha, len(keys), *keys, *args)
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
            reply = await self.connection.call("EVAL", self.source, len(keys), *keys, *args)
        return _raise(reply)


class PipelinedRedis(aioredis.Redis):
    """redis-py's client, whose Lua scripts run on the pipelined connection, closed with it."""

    def __init__(self, pipelined: PipelinedConnection, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipelined = pipelined

    # (redis-py types its asyncio client's register_script as the synchronous one's: AsyncScript is right)
    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]
        return PipelinedScript(self, script, self.pipelined)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.pipelined.close()
        await super().aclose(close_connection_pool)
