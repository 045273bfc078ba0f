"""A cache of conversation histories in Redis, in front of SQL (which stays the truth).

Writes go through: an appended message is appended to a cached history. Every read is
checked against the conversation's `message_count` and `last_message_id` from SQL, so a history that missed
a write (Redis restarted, flushed, or a race) is never served; it is rebuilt instead.
Any Redis failure falls back to SQL silently: the cache can only make reads faster.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import orjson
from redis.exceptions import RedisError

logger = logging.getLogger("realtime_llm.cache")

APPEND = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RPUSH', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class HistoryCache:
    """No cache: with one process and no Redis, SQL answers directly."""

    async def get(self, conversation_id: int, count: int, last_message_id: int) -> list[dict[str, Any]] | None:
        return None

    async def put(self, conversation_id: int, messages: Sequence[dict[str, Any]]) -> None:
        pass

    async def append(self, conversation_id: int, message: dict[str, Any]) -> None:
        pass

    async def drop(self, conversation_id: int) -> None:
        pass


class RedisHistoryCache(HistoryCache):
    def __init__(self, redis: Any, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds
        self._append = redis.register_script(APPEND)

    def key(self, conversation_id: int) -> str:
        # v2: answers carry `reasoning`; a history cached before that is not read again.
        return f"{self.prefix}:{{conv:{conversation_id}}}:history:v2"

    async def get(self, conversation_id: int, count: int, last_message_id: int) -> list[dict[str, Any]] | None:
        try:
            raw = await self.redis.lrange(self.key(conversation_id), 0, -1)
        except (RedisError, OSError) as exc:
            logger.debug("history cache unavailable: %s", type(exc).__name__)
            return None
        if not raw:
            return None
        messages = [orjson.loads(item) for item in raw]
        if messages[-1]["message_id"] != last_message_id or len(messages) != count:
            return None
        return messages

    async def put(self, conversation_id: int, messages: Sequence[dict[str, Any]]) -> None:
        if not messages:
            return
        key = self.key(conversation_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.rpush(key, *(orjson.dumps(m) for m in messages))
                pipe.expire(key, self.ttl)
                await pipe.execute()
        except (RedisError, OSError):
            pass

    async def append(self, conversation_id: int, message: dict[str, Any]) -> None:
        try:
            await self._append(keys=[self.key(conversation_id)], args=[orjson.dumps(message), self.ttl])
        except (RedisError, OSError):
            pass

    async def drop(self, conversation_id: int) -> None:
        try:  # and the key before v2, which a server of an earlier version may have left
            await self.redis.delete(self.key(conversation_id), self.key(conversation_id).removesuffix(":v2"))
        except (RedisError, OSError):
            pass
