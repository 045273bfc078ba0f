"""The Redis broker: several processes share conversations through one Redis.

Per conversation (one hash tag, so a Redis Cluster keeps them in one slot):
    {prefix}:{conv:N}:seq     the event id counter
    {prefix}:{conv:N}:events  a Stream, the bounded replay buffer (entry id "<event id>-1")
    {prefix}:{conv:N}:live    pub/sub channel of the events

Publishing is one Lua script, so an event costs one round trip: it takes the next id,
appends to the Stream, publishes, and renews the keys' expiry. The process's one pub/sub
connection (pubsub.py) is subscribed to the live channels of the conversations it has
subscribers for. (The generation lock and the stop channel: redis_locks.py.)
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, AsyncIterator

import orjson

from realtime_llm.broker.base import Broker, BrokerUnavailable, ConversationGone, Subscription, resync_before
from realtime_llm.broker.eventids import CounterMissing, Gathered
from realtime_llm.broker.pubsub import PubSub, redis_call
from realtime_llm.config import Settings
from realtime_llm.events import SETTLING, Event, event_template
from realtime_llm.metrics import count_published
from realtime_llm.redisclient import RedisClient

# A missing counter (never used, expired, Redis restarted) is never started from 0: the
# script answers -1 and the broker restores it from the SQL ceiling (broker/eventids.py).
# ARGV[4]: the counter's time to live, ARGV[6]: the buffer's (shorter after a settling event).
PUBLISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local id = redis.call('INCR', KEYS[1])
local payload = ARGV[1] .. id .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id .. '-1', 'e', payload)
redis.call('PUBLISH', ARGV[5], payload)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return id
"""

# An event one of whose strings is built inside Redis from the data of earlier events
# (full_response from the answer's message events, done's `reasoning` from its reasoning
# events), so that text is not sent to Redis twice (bench: 3.5x -> 2.5x the answer in bytes
# written). KEYS as PUBLISH. ARGV[1] = the head of the events to gather, ARGV[2..4] = the
# event in three parts around the built string and the id: A .. S .. B .. id .. C when
# ARGV[5] is "1", else A .. id .. B .. S .. C; ARGV[6..8] = maxlen, ttl, channel, ARGV[9] =
# the id the pieces follow, ARGV[10] = how many there are, ARGV[11] = the buffer's ttl. Each piece's data is taken as
# written (already JSON-escaped, and escaping is per character, so the pieces concatenate
# to the escaped text). If the buffer no longer holds all of them: -1, nothing published.
PUBLISH_GATHERED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local head = ARGV[1]
local parts = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], (tonumber(ARGV[9]) + 1) .. '-0', '+')) do
  local payload = entry[2][2]
  if string.sub(payload, 1, #head) == head then
    parts[#parts + 1] = string.sub(payload, #head + 1, string.find(payload, '","id":', #head + 1, true) - 1)
  end
end
if #parts ~= tonumber(ARGV[10]) then return -1 end
local id = redis.call('INCR', KEYS[1])
local payload
if ARGV[5] == '1' then
  payload = ARGV[2] .. table.concat(parts) .. ARGV[3] .. id .. ARGV[4]
else
  payload = ARGV[2] .. id .. ARGV[3] .. table.concat(parts) .. ARGV[4]
end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], id .. '-1', 'e', payload)
redis.call('PUBLISH', ARGV[8], payload)
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[11])
return id
"""

# Stands for the built string in an event's template; nothing else in a built event's
# metadata is text (reasons, counts, ids), so it cannot occur there.
HOLE = "\ue000"
HOLE_BYTES = HOLE.encode()

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

# The latest event id and the buffered events after ARGV[1], read together (the id first:
# Broker.resume says why). KEYS as PUBLISH; ARGV[2] = at most how many.
RESUME = """
return {redis.call('GET', KEYS[1]), redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])}
"""

GONE = b"gone"
MAX_SUSPECT = 10_000
CONVERSATION_CHANNEL = re.compile(rb"\{conv:(\d+)\}:(?:live|stop)$")


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, settings: Settings, redis: RedisClient, pubsub: PubSub) -> None:
        """`redis` is the process's client (redisclient.py) and `pubsub` its pub/sub
        (sharded on a Redis Cluster): their owner opens and closes them."""
        super().__init__()
        self.settings = settings.stream
        self.prefix = settings.redis.key_prefix
        self.redis = redis
        self.pubsub = pubsub
        pubsub.on_lost(self._lost)
        # On a cluster the scripts publish with SPUBLISH, in the slot of the keys they write.
        publish = pubsub.publish_command
        self._scripts: dict[str, Any] = {
            name: redis.register_script(source.replace("'PUBLISH'", f"'{publish}'"))
            for name, source in (("publish", PUBLISH), ("publish_gathered", PUBLISH_GATHERED),
                                 ("floor", RAISE_FLOOR), ("restore", RESTORE_COUNTER), ("resume", RESUME))
        }
        # Conversations whose counter a failover may have set back: how many losses were seen.
        self._suspect: dict[int, int] = {}

    async def ping(self) -> None:
        await self._call(self.redis.ping())

    def key(self, conversation_id: int, suffix: str) -> str:
        return f"{self.prefix}:{{conv:{conversation_id}}}:{suffix}"

    async def _call(self, awaitable: Any) -> Any:
        return await redis_call(awaitable)

    # -- events ----------------------------------------------------------------------

    async def _publish(self, conversation_id: int, event_type: str, data: str, **metadata: Any) -> Event:
        await self._check_counter(conversation_id)
        prefix, suffix = event_template(event_type, data, conversation_id=conversation_id, **metadata)
        event_id = int(await self._call(self._scripts["publish"](
            keys=[self.key(conversation_id, "seq"), self.key(conversation_id, "events")],
            args=[prefix, suffix, self.settings.replay_events, self.settings.replay_ttl_seconds,
                  self.key(conversation_id, "live"), self._buffer_ttl(event_type)],
        )))
        if event_id < 0:
            raise CounterMissing()
        count_published(event_type)
        return Event(event_id, event_type, prefix + str(event_id).encode() + suffix)

    async def _publish_gathered(self, conversation_id: int, event_type: str, data: str, gathered: Gathered,
                                **metadata: Any) -> Event:
        if gathered.count == 0 or gathered.count >= self.settings.replay_events:  # nothing to build from, or trimmed
            return await self._publish(conversation_id, event_type, data, **metadata)
        await self._check_counter(conversation_id)
        in_data = gathered.field == "data"
        holed = {**metadata} if in_data else {**metadata, gathered.field: HOLE}
        prefix, suffix = event_template(event_type, HOLE if in_data else data, conversation_id=conversation_id, **holed)
        if in_data:  # A .. text .. B .. id .. C
            a, b, c = *prefix.split(HOLE_BYTES), suffix
        else:  # A .. id .. B .. text .. C
            a, (b, c) = prefix, suffix.split(HOLE_BYTES)
        head = b'{"event":"%s","data":"' % gathered.pieces.encode()
        event_id = int(await self._call(self._scripts["publish_gathered"](
            keys=[self.key(conversation_id, "seq"), self.key(conversation_id, "events")],
            args=[head, a, b, c, "1" if in_data else "0", self.settings.replay_events,
                  self.settings.replay_ttl_seconds, self.key(conversation_id, "live"), gathered.after, gathered.count,
                  self._buffer_ttl(event_type)],
        )))
        if event_id < 0:  # the buffer lost some of them (Redis restarted, say): send it whole
            return await self._publish(conversation_id, event_type, data, **metadata)
        count_published(event_type)
        prefix, suffix = event_template(event_type, data, conversation_id=conversation_id, **metadata)
        return Event(event_id, event_type, prefix + str(event_id).encode() + suffix)

    def _buffer_ttl(self, event_type: str) -> int:
        """How long the replay buffer stays after this event: past a settling one (an answer
        saved) a short grace, for clients resuming it; the counter stays for the full ttl
        (a few bytes), so a resume later is told `resync`, not given a gap."""
        if event_type in SETTLING:
            return max(1, round(self.settings.replay_grace_seconds))
        return self.settings.replay_ttl_seconds

    async def replay(self, conversation_id: int, after: int) -> list[Event]:
        entries = await self._call(self.redis.xrange(
            self.key(conversation_id, "events"), min=f"{after + 1}-0", max="+", count=self.settings.replay_events,
        ))
        return [_event(fields[b"e"]) for _, fields in entries]

    async def resume(self, conversation_id: int, after: int) -> list[Event]:
        """As Broker.resume, with the latest id and the buffer read in one script. A lost
        counter is Broker.resume's case: the SQL ceiling stands for it, read before the buffer."""
        if after <= 0:
            return await self.replay(conversation_id, after)
        counter, entries = await self._call(self._scripts["resume"](
            keys=[self.key(conversation_id, "seq"), self.key(conversation_id, "events")],
            args=[f"{after + 1}-0", self.settings.replay_events],
        ))
        if counter is None:
            return await super().resume(conversation_id, after)
        # Each entry is [its id, [field, value]]: the one field "e", the event.
        return resync_before(conversation_id, after, [_event(fields[1]) for _, fields in entries], int(counter))

    @contextlib.asynccontextmanager
    async def subscribe(self, conversation_id: int, after: int | None = None) -> AsyncIterator[Subscription]:
        subscription = Subscription(conversation_id, self.settings.subscriber_queue,
                                    self.settings.subscriber_queue_bytes)
        self._add_local(subscription)
        try:
            # Subscribed (confirmed) before reading the buffer: an event published in
            # between arrives both ways, and the subscription drops the repeat by id.
            await self.pubsub.subscribe(self.key(conversation_id, "live").encode(),
                                        lambda data: self._receive(conversation_id, data))
            if after is not None:
                subscription.add_backlog(await self.resume(conversation_id, after))
            else:
                subscription.last_id = await self.last_event_id(conversation_id)
            yield subscription
        finally:
            if self._remove_local(subscription):
                await self.pubsub.unsubscribe(self.key(conversation_id, "live").encode(), linger=True)

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
        await self.pubsub.publish(self.key(conversation_id, "live"), GONE)

    def _lost(self, channels: frozenset[bytes] | None) -> None:
        """Pub/sub lost these channels (None: all): the streams of their conversations end,
        and the clients resume from the replay buffer. On a cluster a channel is lost when
        its master fails or its slot migrates. A replica promoted in a failover may lack the
        old master's last writes, the event id counter's among them: the conversation's next
        publish here first raises the counter to the SQL ceiling (above every id handed out),
        so no id goes out twice."""
        if channels is None:
            self._fail_local(None, BrokerUnavailable())
            return
        for channel in channels:
            found = CONVERSATION_CHANNEL.search(channel)
            if found is not None:
                conversation_id = int(found.group(1))
                if conversation_id not in self._suspect and len(self._suspect) >= MAX_SUSPECT:
                    del self._suspect[next(iter(self._suspect))]  # bounded: the oldest mark goes
                self._suspect[conversation_id] = self._suspect.get(conversation_id, 0) + 1
                self._fail_local(conversation_id, BrokerUnavailable())

    async def _check_counter(self, conversation_id: int) -> None:
        mark = self._suspect.get(conversation_id)
        if mark is not None:
            await self.ensure_event_floor(conversation_id, await self._ceilings.event_ceiling(conversation_id))
            if self._suspect.get(conversation_id) == mark:  # no loss came meanwhile
                del self._suspect[conversation_id]

    def _receive(self, conversation_id: int, data: bytes) -> None:
        """A message on the conversation's live channel: an event, or word of its deletion."""
        if data == GONE:
            self._fail_local(conversation_id, ConversationGone("conversation deleted"))
        else:
            self._deliver_local(conversation_id, _event(data))

    async def last_event(self, conversation_id: int) -> Event | None:
        last = await self._call(self.redis.xrevrange(self.key(conversation_id, "events"), count=1))
        return _event(last[0][1][b"e"]) if last else None


def _event(payload: bytes) -> Event:
    body = orjson.loads(payload)
    return Event(int(body["id"]), str(body["event"]), bytes(payload))
