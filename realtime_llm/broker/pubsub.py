"""The process's one pub/sub connection to a single Redis, shared by the event log (a conversation's
live events) and the generation locks (its stop requests).

A channel is subscribed once per process, and only while someone here needs it; each
has one handler. A channel left with `linger` stays subscribed a while (LINGER_SECONDS),
so that a client that asks again at once (an agent's loop of turns through SSE, each turn
a new stream) costs no SUBSCRIBE and UNSUBSCRIBE, and their replies, each turn.

When the connection fails, `on_lost` callbacks run (the event log ends its streams, which
resume elsewhere or after a reconnect), the connection is made anew, and the channels
marked `keep` (the stop channels of generations running here) are subscribed again.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, Callable, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.redisclient import REDIS_FAILURES
from realtime_llm.tasks import stop_task

logger = logging.getLogger("realtime_llm.broker.redis")

CONFIRM_TIMEOUT = 5.0
LINGER_SECONDS = 10.0
LINGER_CHANNELS = 1000  # lingering at once at most: past it, the one left longest ago goes

# Told which channels may have missed messages (None: every channel of the process).
LostCallback = Callable[[frozenset[bytes] | None], None]


class PubSub(Protocol):
    """What the event log and the generation locks need of pub/sub: RedisPubSub on one
    Redis, ShardedPubSub (shardedpubsub.py) on a Redis Cluster."""

    publish_command: str  # as a script calls it: PUBLISH, or SPUBLISH

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def on_lost(self, callback: LostCallback) -> None: ...

    async def subscribe(self, channel: bytes, handler: Callable[[bytes], None], *, keep: bool = False) -> None: ...

    async def unsubscribe(self, channel: bytes, *, linger: bool = False) -> None: ...

    async def publish(self, channel: str, data: bytes) -> int: ...


class Reconnected(RedisConnectionError):
    """redis-py made a pub/sub connection anew by itself (raise_on_reconnect)."""


def raise_on_reconnect(pubsub: Any, callback: Callable[[Any], None]) -> None:
    """Have `callback` (a bound method raising Reconnected) run first whenever redis-py
    makes `pubsub`'s connection anew by itself. Its retry of a failed command (the single
    Redis client's pool retries once; even with no retry, the failure handler reconnects
    before giving up) reconnects, subscribes every channel again and reads on: whatever
    was published in between is lost without a word, and a stream would go on past the
    gap. Raised, it reaches the listener, whose loss path tells the owners. First, before
    the PubSub's own re-subscription, which is then not sent on a connection given up."""
    connection = pubsub.connection
    assert connection is not None  # (made by the first subscribe)
    connection.deregister_connect_callback(pubsub.on_connect)
    connection.register_connect_callback(callback)
    connection.register_connect_callback(pubsub.on_connect)


async def redis_call(awaitable: Any) -> Any:
    """A Redis command; its failure is BrokerUnavailable (a 503, or an `error` event)."""
    try:
        return await awaitable
    except REDIS_FAILURES as exc:
        logger.warning("redis call failed: %s", type(exc).__name__)
        raise BrokerUnavailable() from None


class RedisPubSub:
    publish_command = "PUBLISH"

    def __init__(self, redis: aioredis.Redis, prefix: str, linger: float = LINGER_SECONDS) -> None:
        self.redis = redis
        self.prefix = prefix
        self.linger = linger
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._lingering: dict[bytes, float] = {}  # channels left, with no handler: when each goes
        self._handlers: dict[bytes, Callable[[bytes], None]] = {}
        self._keep: set[bytes] = set()
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._lost_callbacks: list[LostCallback] = []
        self._connected = asyncio.Event()

    def on_lost(self, callback: LostCallback) -> None:
        """`callback(None)` whenever the connection fails (messages may have been missed)."""
        self._lost_callbacks.append(callback)

    async def publish(self, channel: str, data: bytes) -> int:
        return int(await redis_call(self.redis.publish(channel, data)))

    async def start(self) -> None:
        await redis_call(self.redis.ping())  # fail start-up clearly when Redis is absent
        await redis_call(self._connect())
        self._listener = asyncio.create_task(self._listen(), name="redis-pubsub-listener")
        self._reaper = asyncio.create_task(self._reap(), name="redis-pubsub-lingering")

    async def close(self) -> None:
        await stop_task(self._reaper)
        await stop_task(self._listener)
        if self._pubsub is not None:
            await self._let_go(self._pubsub)

    async def subscribe(self, channel: bytes, handler: Callable[[bytes], None], *, keep: bool = False) -> None:
        """Deliver the channel's messages to `handler` from the moment this returns (Redis
        has confirmed the subscription). With `keep`, it survives a reconnect. A channel
        taken up from its linger may also hand on a message sent just before, still on its
        way (as one that others here subscribe to already may): the event log drops
        repeats by id."""
        self._lingering.pop(channel, None)
        self._handlers[channel] = handler
        if keep:
            self._keep.add(channel)
        if not self._connected.is_set():  # reconnecting: give it a moment before giving up
            try:
                async with asyncio.timeout(2.0):
                    await self._connected.wait()
            except TimeoutError:
                raise BrokerUnavailable() from None
        confirmed = self._confirmations.get(channel)
        if confirmed is None:
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmations[channel] = confirmed
            try:
                await redis_call(self._pubsub.subscribe(channel))
            except BrokerUnavailable:
                if self._confirmations.get(channel) is confirmed:  # (not a newer connection's)
                    del self._confirmations[channel]
                raise
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await asyncio.shield(confirmed)
        except TimeoutError:
            raise BrokerUnavailable() from None

    async def unsubscribe(self, channel: bytes, *, linger: bool = False) -> None:
        """No more messages for the channel's handler. With `linger`, Redis is told only
        once the channel has gone unasked for `self.linger` seconds; its messages meanwhile
        are dropped. (Not for a channel whose subscribers are counted: a stop channel's.)"""
        self._handlers.pop(channel, None)
        self._keep.discard(channel)
        confirmed = self._confirmations.get(channel)
        if linger and confirmed is not None and confirmed.done() and confirmed.exception() is None:
            self._lingering.pop(channel, None)  # (to the end of the order)
            self._lingering[channel] = asyncio.get_running_loop().time() + self.linger
            if len(self._lingering) > LINGER_CHANNELS:
                await self._unsubscribe_now(next(iter(self._lingering)))
            return
        await self._unsubscribe_now(channel)

    async def _unsubscribe_now(self, channel: bytes) -> None:
        self._lingering.pop(channel, None)
        self._confirmations.pop(channel, None)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.unsubscribe(channel)

    async def _reap(self) -> None:
        """Unsubscribe the channels whose linger is over: the first in `_lingering` (all
        linger as long, and one left again goes to the end), as many as are due."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.linger / 4)
            while self._lingering:
                channel, until = next(iter(self._lingering.items()))
                if until > loop.time():
                    break
                await self._unsubscribe_now(channel)  # (out of `_lingering` before its await)

    async def _connect(self) -> None:
        pubsub = self.redis.pubsub()
        try:
            # Always subscribed to something, so the connection can be read from the start.
            await pubsub.subscribe(f"{self.prefix}:process:{os.getpid()}")
            raise_on_reconnect(pubsub, self._reconnected)
            for channel in list(self._keep):
                self._confirmations[channel] = asyncio.get_running_loop().create_future()
                await pubsub.subscribe(channel)
        except BaseException:  # its connection goes back to the pool (PubSub.__del__ would keep it)
            await self._let_go(pubsub)
            raise
        self._pubsub = pubsub
        self._connected.set()

    async def _listen(self) -> None:
        """Read the connection; when it fails, tell the owners of its channels and reconnect."""
        backoff = 0.2
        while True:
            try:
                if self._pubsub is None:
                    await self._connect()
                    backoff = 0.2
                async for message in self._pubsub.listen():
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._connected.clear()
                if self._pubsub is not None:
                    logger.warning("redis pub/sub connection lost (%s); reconnecting", type(exc).__name__)
                for callback in self._lost_callbacks:
                    callback(None)
                for future in self._confirmations.values():
                    if not future.done():
                        future.set_exception(BrokerUnavailable())
                        future.exception()  # retrieved here, so an unawaited one is not reported
                self._confirmations.clear()
                self._lingering.clear()  # gone with the connection
                old, self._pubsub = self._pubsub, None
                if old is not None:
                    await self._let_go(old)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    def _reconnected(self, connection: Any) -> None:
        """(raise_on_reconnect) Raised into `_listen`, a reconnect is the loss it is: the
        owners are told, and the connection is made anew. A command of a subscriber's that
        meets it fails (BrokerUnavailable), and leaves the connection closed, so the
        listener's read fails too."""
        raise Reconnected("redis-py reconnected the pub/sub connection")

    async def _let_go(self, pubsub: Any) -> None:
        """Close a pub/sub connection. It goes back to the client's pool without our
        callback, which would otherwise fail another command's reconnect."""
        if pubsub.connection is not None:
            pubsub.connection.deregister_connect_callback(self._reconnected)
        with contextlib.suppress(Exception):
            await pubsub.aclose()

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        if message["type"] == "subscribe":
            future = self._confirmations.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
        elif message["type"] == "message":
            handler = self._handlers.get(channel)
            if handler is not None:
                handler(message["data"])
