"""The process's sharded pub/sub on a Redis Cluster (SSUBSCRIBE/SPUBLISH): a message costs
only the shard that owns its channel's slot, not every node as PUBLISH does.

A channel is subscribed at the master of its slot, on one pub/sub connection per master
this process needs (a link), each read by a task of its own. A link whose master fails,
one silent past its health check, and a channel whose slot migrates away (the master then
ends its subscription with an `sunsubscribe` it was not asked for), are reported to `on_lost` with the channels they
carried: their owners end those streams (a client resumes from the replay Stream, which
moved with the slot). The channels marked `keep` (the stop channels of generations running
here) are subscribed again at the slot's new master as soon as the cluster names one.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any, Callable, Coroutine

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.broker.pubsub import CONFIRM_TIMEOUT, LostCallback, Reconnected, raise_on_reconnect, redis_call
from realtime_llm.redisclient import REDIS_FAILURES, node_client
from realtime_llm.tasks import stop_task

logger = logging.getLogger("realtime_llm.broker.redis")

RESUBSCRIBE_FOR_SECONDS = 60.0  # a kept channel is tried again this long (a failover takes seconds)
# A link silent this long is asked for a PING; silent three times as long, it is taken for
# lost (a master whose host died sends no FIN: without this its streams would just stall).
HEALTH_SECONDS = 5.0


class StaleSlotMap(BrokerUnavailable):
    """A master answered an SSUBSCRIBE with MOVED: the client's slot map is out of date."""


class _Link:
    """One pub/sub connection to one master, and the shard channels subscribed on it."""

    def __init__(self, node: ClusterNode, client: aioredis.Redis) -> None:
        self.name = node.name
        self.client = client
        self.pubsub: Any = client.pubsub()
        self.channels: set[bytes] = set()  # confirmed by the master (the listener keeps this)
        self.confirmations: dict[bytes, asyncio.Future[None]] = {}
        self.leaving: set[bytes] = set()  # unsubscribed by us: their sunsubscribe is expected
        self.task: asyncio.Task[None] | None = None

    def reconnected(self, connection: Any) -> None:
        """(pubsub.raise_on_reconnect) A reconnect is a loss: the listener's path runs."""
        raise Reconnected(f"redis-py reconnected the pub/sub connection to {self.name}")

    def fail_pending(self, error: BrokerUnavailable) -> None:
        for future in self.confirmations.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved here, so an unawaited one is not reported
        self.confirmations.clear()

    async def close(self) -> None:
        await stop_task(self.task)
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()


class ShardedPubSub:
    publish_command = "SPUBLISH"

    def __init__(self, cluster: RedisCluster, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self._handlers: dict[bytes, Callable[[bytes], None]] = {}
        self._keep: set[bytes] = set()
        self._links: dict[str, _Link] = {}
        self._connecting: dict[str, asyncio.Future[_Link]] = {}  # one attempt per master at a time
        self._lost_callbacks: list[LostCallback] = []
        self._tasks: set[asyncio.Task[None]] = set()  # resubscriptions, refreshes, late unsubscribes
        self._closing = False

    def on_lost(self, callback: LostCallback) -> None:
        """`callback(channels)` when messages on these channels may have been missed."""
        self._lost_callbacks.append(callback)

    async def start(self) -> None:
        await redis_call(self.cluster.initialize())  # fail start-up clearly when the cluster is absent
        await redis_call(self.cluster.ping())

    async def close(self) -> None:
        self._closing = True  # a listener ending now starts nothing new
        for connecting in list(self._connecting.values()):
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()
        for task in list(self._tasks):
            await stop_task(task)

    async def publish(self, channel: str, data: bytes) -> int:
        return int(await redis_call(self.cluster.spublish(channel, data)))

    async def subscribe(self, channel: bytes, handler: Callable[[bytes], None], *, keep: bool = False) -> None:
        """Deliver the channel's messages to `handler` from the moment this returns (its
        master has confirmed). With `keep`, it follows its slot to a new master."""
        self._handlers[channel] = handler
        if keep:
            self._keep.add(channel)
        try:
            await self._subscribe_once(channel)
        except StaleSlotMap:  # the slot moved and this process had not heard: ask, then once more
            await redis_call(self.cluster.nodes_manager.initialize())
            await self._subscribe_once(channel)

    async def _subscribe_once(self, channel: bytes) -> None:
        try:
            node = self.cluster.get_node_from_key(channel.decode())
        except REDIS_FAILURES:  # the slot has no master right now (a failover)
            raise BrokerUnavailable() from None
        if node is None:
            raise BrokerUnavailable()
        link = await self._link(node)
        if channel in link.channels:
            return
        confirmed = link.confirmations.get(channel)
        try:
            if confirmed is None:  # else another caller's SSUBSCRIBE is on its way
                confirmed = asyncio.get_running_loop().create_future()
                link.confirmations[channel] = confirmed
                link.leaving.discard(channel)
                await redis_call(link.pubsub.ssubscribe(channel))
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await asyncio.shield(confirmed)
        except TimeoutError:
            # No answer: every caller waiting for it fails alike, and the next one asks
            # anew (a late confirmation nobody waits for is unsubscribed by the listener).
            if link.confirmations.get(channel) is confirmed and confirmed is not None:
                del link.confirmations[channel]
                if not confirmed.done():
                    confirmed.set_exception(BrokerUnavailable())
                    confirmed.exception()
            raise BrokerUnavailable() from None

    async def unsubscribe(self, channel: bytes, *, linger: bool = False) -> None:
        """(`linger` is not done on a cluster: a channel goes at once.)"""
        self._handlers.pop(channel, None)
        self._keep.discard(channel)
        for link in list(self._links.values()):
            if channel in link.channels:
                link.channels.discard(channel)
                link.leaving.add(channel)
                with contextlib.suppress(Exception):
                    await link.pubsub.sunsubscribe(channel)

    async def _link(self, node: ClusterNode) -> _Link:
        """The master's link; every caller waiting for a new one shares one attempt (a dead
        master costs them one connect timeout together, not one each in turn)."""
        link = self._links.get(node.name)
        if link is not None:
            return link
        if self._closing:
            raise BrokerUnavailable()
        connecting = self._connecting.get(node.name)
        if connecting is None:
            connecting = asyncio.ensure_future(self._connect(node))
            self._connecting[node.name] = connecting

            def done(task: asyncio.Future[_Link], name: str = node.name) -> None:
                if self._connecting.get(name) is task:
                    del self._connecting[name]
                if not task.cancelled():
                    task.exception()  # retrieved: each waiter has it raised anyway

            connecting.add_done_callback(done)
        return await asyncio.shield(connecting)

    async def _connect(self, node: ClusterNode) -> _Link:
        link = _Link(node, node_client(self.cluster, node.host, int(node.port)))
        try:
            # Always subscribed to something, so the connection can be read from the start.
            await redis_call(link.pubsub.subscribe(f"{self.prefix}:process:{os.getpid()}"))
            raise_on_reconnect(link.pubsub, link.reconnected)  # (the link's own client: no need to take it off)
            if self._closing:
                raise BrokerUnavailable()
        except BaseException:  # unreachable, closing, or cancelled: the connection goes with it
            await link.close()
            raise
        self._links[node.name] = link
        link.task = asyncio.create_task(self._listen(link), name=f"redis-shard-listener-{node.name}")
        return link

    async def _listen(self, link: _Link) -> None:
        heard = time.monotonic()
        pinged: float | None = None  # when the PING now unanswered was sent
        try:
            while True:
                try:
                    message = await link.pubsub.get_message(timeout=HEALTH_SECONDS)
                except ResponseError:  # an SSUBSCRIBE sent to a master that no longer has the slot
                    link.fail_pending(StaleSlotMap())
                    self._spawn(self._refresh_map())
                    continue
                now = time.monotonic()
                if message is not None:
                    heard, pinged = now, None
                    self._dispatch(link, message)
                elif pinged is not None and now - pinged > 2 * HEALTH_SECONDS:
                    raise TimeoutError("no answer to PING")
                elif pinged is None and now - heard > HEALTH_SECONDS:
                    await link.pubsub.ping()
                    pinged = now
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("redis shard %s: pub/sub connection lost (%s)", link.name, type(exc).__name__)
        # The master is gone (or the connection is): whatever it carried may have been missed.
        if self._links.get(link.name) is link:
            del self._links[link.name]
        link.fail_pending(BrokerUnavailable())
        self._lose(set(link.channels))
        with contextlib.suppress(Exception):
            await link.pubsub.aclose()
        with contextlib.suppress(Exception):
            await link.client.aclose()

    def _dispatch(self, link: _Link, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            handler = self._handlers.get(channel)
            if handler is not None:
                try:
                    handler(message["data"])
                except Exception:  # one bad message must not end the link's every stream
                    logger.exception("redis shard channel %r: a message could not be handled", channel)
        elif kind == "ssubscribe":
            future = link.confirmations.pop(channel, None)
            if channel in self._handlers:
                link.channels.add(channel)
                if future is not None and not future.done():
                    future.set_result(None)
            else:  # nobody wants it any more (unsubscribed, or its subscriber gave up waiting)
                link.leaving.add(channel)
                self._spawn(link.pubsub.sunsubscribe(channel))
        elif kind == "sunsubscribe":
            if channel in link.leaving:
                link.leaving.discard(channel)
            elif channel in link.channels:  # not asked for: its slot moved to another master
                link.channels.discard(channel)
                self._lose({channel})

    def _lose(self, channels: set[bytes]) -> None:
        if not channels or self._closing:
            return
        for callback in self._lost_callbacks:
            callback(frozenset(channels))
        for channel in channels & self._keep:
            self._spawn(self._resubscribe(channel))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        if self._closing:
            work.close()
            return
        task: asyncio.Task[Any] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # failures here are best effort

    async def _refresh_map(self) -> None:
        with contextlib.suppress(*REDIS_FAILURES):
            await self.cluster.nodes_manager.initialize()

    async def _resubscribe(self, channel: bytes) -> None:
        """A kept channel, at its slot's master as soon as the cluster names one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESUBSCRIBE_FOR_SECONDS
        wait = 0.2
        while channel in self._keep and loop.time() < deadline:
            try:
                await self.cluster.nodes_manager.initialize()
                await self.subscribe(channel, self._handlers[channel], keep=True)
                return
            except REDIS_FAILURES + (BrokerUnavailable, KeyError):
                await asyncio.sleep(wait)
                wait = min(wait * 2, 2.0)
        if channel in self._keep:
            logger.warning("redis shard channel %r could not be subscribed again", channel)
