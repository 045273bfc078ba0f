"""The Redis broker: several processes share conversations through one Redis.

Per conversation (one hash tag, so a Redis Cluster keeps them in one slot):
    {prefix}:{conv:N}:seq     the event id counter
    {prefix}:{conv:N}:events  a Stream, the bounded replay buffer (entry id "<event id>-1")
    {prefix}:{conv:N}:lock    the one-generation lock (owner, with expiry)
    {prefix}:{conv:N}:live    pub/sub channel of the events
    {prefix}:{conv:N}:stop    pub/sub channel of stop requests

Publishing is one Lua script, so an event costs one round trip: it takes the next id,
appends to the Stream, publishes, and renews the keys' expiry. Each process holds one
pub/sub connection, subscribed to the channels of the conversations it has subscribers
or generations for.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, AsyncIterator, Callable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from realtime_llm.broker.base import Broker, BrokerUnavailable, ConversationGone, Subscription
from realtime_llm.broker.eventids import CounterMissing
from realtime_llm.config import Settings
from realtime_llm.errors import DATABASE_ERRORS
from realtime_llm.events import ERROR, FULL_RESPONSE, TERMINAL, Event, event_template
from realtime_llm.metrics import EVENTS_PUBLISHED

logger = logging.getLogger("realtime_llm.broker.redis")

# A missing counter (never used, expired, Redis restarted) is never started from 0: the
# script answers -1 and the broker restores it from the SQL ceiling (broker/eventids.py).
PUBLISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local id = redis.call('INCR', KEYS[1])
local payload = ARGV[1] .. id .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id .. '-1', 'e', payload)
redis.call('PUBLISH', ARGV[5], payload)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return id
"""

# full_response built inside Redis from the answer's message events, so the answer is not
# sent to Redis twice (bench: 3.5x -> 2.5x the answer in bytes written). KEYS as PUBLISH;
# ARGV[1] = the event up to its data, ARGV[2] = after its data up to the id, ARGV[3] =
# after the id, ARGV[4..6] = maxlen, ttl, channel, ARGV[7] = the id the answer's events
# follow, ARGV[8] = how many message events it has. Each message event's data is taken as
# written (already JSON-escaped, and escaping is per character, so the pieces concatenate
# to the escaped answer). If the buffer no longer holds all of them: -1, nothing published.
PUBLISH_ANSWER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local head = '{"event":"message","data":"'
local parts = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], (tonumber(ARGV[7]) + 1) .. '-0', '+')) do
  local payload = entry[2][2]
  if string.sub(payload, 1, #head) == head then
    parts[#parts + 1] = string.sub(payload, #head + 1, string.find(payload, '","id":', #head + 1, true) - 1)
  end
end
if #parts ~= tonumber(ARGV[8]) then return -1 end
local id = redis.call('INCR', KEYS[1])
local payload = ARGV[1] .. table.concat(parts) .. ARGV[2] .. id .. ARGV[3]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], id .. '-1', 'e', payload)
redis.call('PUBLISH', ARGV[6], payload)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return id
"""

RESTORE_COUNTER = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return tonumber(ARGV[1]) end
return tonumber(redis.call('GET', KEYS[1]))
"""

RAISE_FLOOR = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return current
"""

# A lock that expired (its renewals failed for a while: Redis busy or briefly away) but
# that nobody else took is taken again: only another holder means it is lost.
REFRESH_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

GONE = b"gone"
CONFIRM_TIMEOUT = 5.0


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        """`redis` is the process's client (redisclient.py): its owner closes it."""
        super().__init__()
        self.settings = settings.stream
        self.prefix = settings.redis.key_prefix
        self.redis = redis
        self._held_locks: dict[int, str] = {}  # generations running here: alive by definition
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._channel_cid: dict[bytes, int] = {}
        self._stop_callbacks: dict[int, set[Callable[[], None]]] = {}
        self._scripts: dict[str, Any] = {}
        self._connected = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        for name, source in (("publish", PUBLISH), ("publish_answer", PUBLISH_ANSWER), ("floor", RAISE_FLOOR),
                             ("restore", RESTORE_COUNTER),
                             ("refresh", REFRESH_LOCK), ("release", RELEASE_LOCK)):
            self._scripts[name] = self.redis.register_script(source)
        await self._call(self.redis.ping())  # fail start-up clearly when Redis is absent
        await self._call(self._connect_pubsub())
        self._listener = asyncio.create_task(self._listen(), name="redis-broker-listener")
        self._watchdog = asyncio.create_task(self._watch_dead_generations(), name="redis-broker-watchdog")

    async def close(self) -> None:
        for task in (self._listener, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    async def ping(self) -> None:
        await self._call(self.redis.ping())

    def key(self, conversation_id: int, suffix: str) -> str:
        return f"{self.prefix}:{{conv:{conversation_id}}}:{suffix}"

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            logger.warning("redis call failed: %s", type(exc).__name__)
            raise BrokerUnavailable() from None

    # -- events ----------------------------------------------------------------------

    async def _publish(self, conversation_id: int, event_type: str, data: str, **metadata: Any) -> Event:
        prefix, suffix = event_template(event_type, data, conversation_id=conversation_id, **metadata)
        event_id = int(await self._call(self._scripts["publish"](
            keys=[self.key(conversation_id, "seq"), self.key(conversation_id, "events")],
            args=[prefix, suffix, self.settings.replay_events, self.settings.replay_ttl_seconds,
                  self.key(conversation_id, "live")],
        )))
        if event_id < 0:
            raise CounterMissing()
        EVENTS_PUBLISHED.labels(event_type).inc()
        return Event(event_id, event_type, prefix + str(event_id).encode() + suffix)

    async def _publish_answer(self, conversation_id: int, answer: str, after: int, deltas: int,
                              **metadata: Any) -> Event:
        if deltas == 0 or deltas >= self.settings.replay_events:  # nothing to build from, or trimmed
            return await self._publish(conversation_id, FULL_RESPONSE, answer, **metadata)
        empty, suffix = event_template(FULL_RESPONSE, "", conversation_id=conversation_id, **metadata)
        head, _, _ = empty.partition(b'"data":"')  # b'{"event":"full_response","data":"' then the data
        head += b'"data":"'
        event_id = int(await self._call(self._scripts["publish_answer"](
            keys=[self.key(conversation_id, "seq"), self.key(conversation_id, "events")],
            args=[head, empty[len(head):], suffix, self.settings.replay_events, self.settings.replay_ttl_seconds,
                  self.key(conversation_id, "live"), after, deltas],
        )))
        if event_id < 0:  # the buffer lost some of them (Redis restarted, say): send it whole
            return await self._publish(conversation_id, FULL_RESPONSE, answer, **metadata)
        EVENTS_PUBLISHED.labels(FULL_RESPONSE).inc()
        prefix, suffix = event_template(FULL_RESPONSE, answer, conversation_id=conversation_id, **metadata)
        return Event(event_id, FULL_RESPONSE, prefix + str(event_id).encode() + suffix)

    async def replay(self, conversation_id: int, after: int) -> list[Event]:
        entries = await self._call(self.redis.xrange(
            self.key(conversation_id, "events"), min=f"{after + 1}-0", max="+", count=self.settings.replay_events,
        ))
        return [_event(fields[b"e"]) for _, fields in entries]

    @contextlib.asynccontextmanager
    async def subscribe(self, conversation_id: int, after: int | None = None) -> AsyncIterator[Subscription]:
        subscription = Subscription(conversation_id, self.settings.subscriber_queue,
                                    self.settings.subscriber_queue_bytes)
        self._add_local(subscription)
        try:
            # Subscribed (confirmed) before reading the buffer: an event published in
            # between arrives both ways, and the subscription drops the repeat by id.
            await self._ensure_channel(self.key(conversation_id, "live").encode(), conversation_id)
            if after is not None:
                subscription.add_backlog(await self.replay(conversation_id, after))
            else:
                subscription.last_id = await self.last_event_id(conversation_id)
            yield subscription
        finally:
            if self._remove_local(subscription):
                await self._drop_channel(self.key(conversation_id, "live").encode())

    async def _counter(self, conversation_id: int) -> int | None:
        counter = await self._call(self.redis.get(self.key(conversation_id, "seq")))
        return None if counter is None else int(counter)

    async def _restore_counter(self, conversation_id: int, floor: int) -> int:
        return int(await self._call(self._scripts["restore"](
            keys=[self.key(conversation_id, "seq")], args=[floor, self.settings.replay_ttl_seconds],
        )))

    async def _raise_counter(self, conversation_id: int, floor: int) -> None:
        await self._call(self._scripts["floor"](
            keys=[self.key(conversation_id, "seq")], args=[floor, self.settings.replay_ttl_seconds],
        ))

    async def clear_replay(self, conversation_id: int) -> None:
        await self._call(self.redis.delete(self.key(conversation_id, "events")))

    async def drop(self, conversation_id: int) -> None:
        keys = [self.key(conversation_id, s) for s in ("seq", "events")]
        self._fail_local(conversation_id, ConversationGone("conversation deleted"))
        await self._call(self.redis.delete(*keys))
        await self._call(self.redis.publish(self.key(conversation_id, "live"), GONE))

    # -- the lock and the stop signal --------------------------------------------------

    async def acquire_lock(self, conversation_id: int, owner: str, ttl: float) -> bool:
        taken = bool(await self._call(self.redis.set(
            self.key(conversation_id, "lock"), owner, nx=True, px=int(ttl * 1000),
        )))
        if taken:
            self._held_locks[conversation_id] = owner
        return taken

    async def refresh_lock(self, conversation_id: int, owner: str, ttl: float) -> bool:
        return bool(await self._call(self._scripts["refresh"](
            keys=[self.key(conversation_id, "lock")], args=[owner, int(ttl * 1000)],
        )))

    async def release_lock(self, conversation_id: int, owner: str) -> None:
        if self._held_locks.get(conversation_id) == owner:
            del self._held_locks[conversation_id]
        with contextlib.suppress(BrokerUnavailable):  # it expires by itself if Redis is away
            await self._call(self._scripts["release"](keys=[self.key(conversation_id, "lock")], args=[owner]))

    async def lock_holder(self, conversation_id: int) -> str | None:
        holder = await self._call(self.redis.get(self.key(conversation_id, "lock")))
        return holder.decode() if holder else None

    @contextlib.asynccontextmanager
    async def on_stop(self, conversation_id: int, callback: Callable[[], None]) -> AsyncIterator[None]:
        callbacks = self._stop_callbacks.setdefault(conversation_id, set())
        callbacks.add(callback)
        channel = self.key(conversation_id, "stop").encode()
        try:
            await self._ensure_channel(channel, conversation_id)
            yield
        finally:
            callbacks.discard(callback)
            if not callbacks:
                del self._stop_callbacks[conversation_id]
                await self._drop_channel(channel)

    async def request_stop(self, conversation_id: int) -> bool:
        receivers = await self._call(self.redis.publish(self.key(conversation_id, "stop"), b"stop"))
        return int(receivers) > 0

    # -- the pub/sub connection ----------------------------------------------------------

    async def _ensure_channel(self, channel: bytes, conversation_id: int) -> None:
        """Subscribe this process to a channel (once), and wait until Redis confirms it."""
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
            self._channel_cid[channel] = conversation_id
            try:
                await self._call(self._pubsub.subscribe(channel))
            except BrokerUnavailable:
                self._confirmations.pop(channel, None)
                raise
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await asyncio.shield(confirmed)
        except TimeoutError:
            raise BrokerUnavailable() from None

    async def _drop_channel(self, channel: bytes) -> None:
        self._confirmations.pop(channel, None)
        self._channel_cid.pop(channel, None)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.unsubscribe(channel)

    async def _connect_pubsub(self) -> None:
        pubsub = self.redis.pubsub()
        # Always subscribed to something, so the connection can be read from the start.
        await pubsub.subscribe(f"{self.prefix}:process:{os.getpid()}")
        for conversation_id in list(self._stop_callbacks):  # generations still running here
            channel = self.key(conversation_id, "stop").encode()
            self._confirmations[channel] = asyncio.get_running_loop().create_future()
            self._channel_cid[channel] = conversation_id
            await pubsub.subscribe(channel)
        self._pubsub = pubsub
        self._connected.set()

    async def _listen(self) -> None:
        """Read the pub/sub connection; when it fails, end local streams and reconnect."""
        backoff = 0.2
        while True:
            try:
                if self._pubsub is None:
                    await self._connect_pubsub()
                    backoff = 0.2
                async for message in self._pubsub.listen():
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: streams end with an error, we retry
                self._connected.clear()
                if self._pubsub is not None:
                    logger.warning("redis pub/sub connection lost (%s); reconnecting", type(exc).__name__)
                self._fail_local(None, BrokerUnavailable())
                for future in self._confirmations.values():
                    if not future.done():
                        future.set_exception(BrokerUnavailable())
                        future.exception()  # retrieved here, so an unawaited one is not reported
                self._confirmations.clear()
                old, self._pubsub = self._pubsub, None
                if old is not None:
                    with contextlib.suppress(Exception):
                        await old.aclose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"]
        if kind == "subscribe":
            future = self._confirmations.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if kind != "message":
            return
        conversation_id = self._channel_cid.get(channel)
        if conversation_id is None:
            return
        if channel.endswith(b":stop"):
            for callback in list(self._stop_callbacks.get(conversation_id, ())):
                callback()
        elif message["data"] == GONE:
            self._fail_local(conversation_id, ConversationGone("conversation deleted"))
        else:
            self._deliver_local(conversation_id, _event(message["data"]))

    # -- generations whose process died ----------------------------------------------------

    async def _watch_dead_generations(self) -> None:
        """A generation whose process died leaves its stream unfinished and its lock to
        expire. Any process with subscribers notices, takes the lock (so only one does),
        and publishes the `error` that ends the stream for everyone."""
        interval = max(0.5, self.settings.lock_ttl_seconds / 3)
        owner = f"watchdog-{os.getpid()}"
        while True:
            await asyncio.sleep(interval)
            for conversation_id in list(self._local):
                if conversation_id in self._held_locks:  # its generation runs in this process
                    continue
                with contextlib.suppress(BrokerUnavailable, *DATABASE_ERRORS):  # the next round tries again
                    if await self.lock_holder(conversation_id) is not None:
                        continue
                    if await self._unfinished(conversation_id) and await self.acquire_lock(conversation_id, owner, 5):
                        try:
                            if await self._unfinished(conversation_id):  # still, now that we hold the lock
                                await self.publish(conversation_id, ERROR,
                                                   "the server generating this answer stopped; the answer was lost")
                        finally:
                            await self.release_lock(conversation_id, owner)

    async def _unfinished(self, conversation_id: int) -> bool:
        """The conversation's last event says a generation was running."""
        last = await self._call(self.redis.xrevrange(self.key(conversation_id, "events"), count=1))
        return bool(last) and _event(last[0][1][b"e"]).type not in TERMINAL | {"title"}


def _event(payload: bytes) -> Event:
    body = orjson.loads(payload)
    return Event(int(body["id"]), str(body["event"]), bytes(payload))
