"""Generation locks through Redis, for several processes (broker/locks.py says what they are).

Per conversation, in its hash tag (one Redis Cluster slot with its events):
    {prefix}:{conv:N}:lock    the lock: its owner, with an expiry
    {prefix}:{conv:N}:stop    pub/sub channel of stop requests
"""
from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Callable, Collection

from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.broker.locks import GenerationLocks
from realtime_llm.broker.pubsub import PubSub, redis_call
from realtime_llm.redisclient import RedisClient

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

# A script, not a SET command: scripts go over the pipelined connection (redispipeline.py).
ACQUIRE_LOCK = "return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])"

RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLocks(GenerationLocks):
    name = "redis"

    def __init__(self, redis: RedisClient, prefix: str, pubsub: PubSub) -> None:
        self.redis = redis
        self.prefix = prefix
        self.pubsub = pubsub
        self._held: dict[int, str] = {}  # generations running here: alive by definition
        self._stop_callbacks: dict[int, set[Callable[[], None]]] = {}
        self._acquire: Any = redis.register_script(ACQUIRE_LOCK)
        self._refresh: Any = redis.register_script(REFRESH_LOCK)
        self._release: Any = redis.register_script(RELEASE_LOCK)

    def key(self, conversation_id: int, suffix: str) -> str:
        return f"{self.prefix}:{{conv:{conversation_id}}}:{suffix}"

    async def acquire(self, conversation_id: int, owner: str, ttl: float) -> bool:
        taken = bool(await redis_call(self._acquire(keys=[self.key(conversation_id, "lock")],
                                                    args=[owner, int(ttl * 1000)])))
        if taken:
            self._held[conversation_id] = owner
        return taken

    async def refresh(self, conversation_id: int, owner: str, ttl: float) -> bool:
        return bool(await redis_call(self._refresh(keys=[self.key(conversation_id, "lock")],
                                                   args=[owner, int(ttl * 1000)])))

    async def release(self, conversation_id: int, owner: str) -> None:
        if self._held.get(conversation_id) == owner:
            del self._held[conversation_id]
        with contextlib.suppress(BrokerUnavailable):  # it expires by itself if Redis is away
            await redis_call(self._release(keys=[self.key(conversation_id, "lock")], args=[owner]))

    async def holder(self, conversation_id: int) -> str | None:
        holder = await redis_call(self.redis.get(self.key(conversation_id, "lock")))
        return holder.decode() if holder else None

    def held_here(self) -> Collection[int]:
        return set(self._held)

    @contextlib.asynccontextmanager
    async def on_stop(self, conversation_id: int, callback: Callable[[], None]) -> AsyncIterator[None]:
        callbacks = self._stop_callbacks.setdefault(conversation_id, set())
        callbacks.add(callback)
        channel = self.key(conversation_id, "stop").encode()
        try:
            await self.pubsub.subscribe(channel, lambda _: self._stop(conversation_id), keep=True)
            yield
        finally:
            callbacks.discard(callback)
            if not callbacks:
                del self._stop_callbacks[conversation_id]
                await self.pubsub.unsubscribe(channel)

    def _stop(self, conversation_id: int) -> None:
        for callback in list(self._stop_callbacks.get(conversation_id, ())):
            callback()

    async def request_stop(self, conversation_id: int) -> bool:
        return await self.pubsub.publish(self.key(conversation_id, "stop"), b"stop") > 0
