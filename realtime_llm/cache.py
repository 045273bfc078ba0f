"""A cache of conversation histories (their active branch) in Redis, in front of SQL
(which stays the truth).

A cached history is a list: a header {"count","leaf"} (the conversation's message_count and
active_leaf_id it was read at), then the messages. Writes go through: a message added at
the end of the cached branch is appended and the header moved on; any other message (an
edit, a regenerated answer) drops the list. Every read is checked against the
conversation's message_count and active_leaf_id from SQL, so a history that missed a write
or a branch switch (Redis restarted, flushed, or a race) is never served; it is rebuilt.
Any Redis failure falls back to SQL silently: the cache can only make reads faster.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import orjson

from realtime_llm.redisclient import REDIS_FAILURES

logger = logging.getLogger("realtime_llm.cache")

# KEYS[1] the list; ARGV: the header it must have, the message, the new header, the TTL.
APPEND = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then
  redis.call('LSET', KEYS[1], 0, ARGV[3])
  redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
else
  redis.call('DEL', KEYS[1])
end
return 0
"""


def header(count: int, leaf: int) -> bytes:
    return b'{"count":%d,"leaf":%d}' % (count, leaf)


class HistoryCache:
    """No cache: with one process and no Redis, SQL answers directly."""

    async def get(self, conversation_id: int, count: int, leaf: int) -> list[dict[str, Any]] | None:
        return None

    async def put(self, conversation_id: int, count: int, leaf: int, messages: Sequence[dict[str, Any]]) -> None:
        pass

    async def append(self, conversation_id: int, message: dict[str, Any], count: int, parent: int) -> None:
        """`message`, the conversation's `count`th, was added under `parent`."""

    async def drop(self, conversation_id: int) -> None:
        pass


class RedisHistoryCache(HistoryCache):
    def __init__(self, redis: Any, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds
        self._append = redis.register_script(APPEND)

    def key(self, conversation_id: int) -> str:
        # v4: a header, then the active branch (with parent and sibling ids; user messages
        # with their attachments); a history cached by an earlier version is not read again.
        return f"{self.prefix}:{{conv:{conversation_id}}}:history:v4"

    async def get(self, conversation_id: int, count: int, leaf: int) -> list[dict[str, Any]] | None:
        try:
            raw = await self.redis.lrange(self.key(conversation_id), 0, -1)
        except REDIS_FAILURES as exc:
            logger.debug("history cache unavailable: %s", type(exc).__name__)
            return None
        if not raw or raw[0] != header(count, leaf):
            return None
        return [orjson.loads(item) for item in raw[1:]]

    async def put(self, conversation_id: int, count: int, leaf: int, messages: Sequence[dict[str, Any]]) -> None:
        if not messages:
            return
        key = self.key(conversation_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.rpush(key, header(count, leaf), *(orjson.dumps(m) for m in messages))
                pipe.expire(key, self.ttl)
                await pipe.execute()
        except REDIS_FAILURES:
            pass

    async def append(self, conversation_id: int, message: dict[str, Any], count: int, parent: int) -> None:
        new_header = header(count, int(message["message_id"]))
        try:
            await self._append(keys=[self.key(conversation_id)],
                               args=[header(count - 1, parent), orjson.dumps(message), new_header, self.ttl])
        except REDIS_FAILURES:
            pass

    async def drop(self, conversation_id: int) -> None:
        key = self.key(conversation_id)
        try:  # and the keys of earlier versions, which a server of such a version may have left
            base = key.removesuffix(":v4")
            await self.redis.delete(key, base + ":v3", base + ":v2", base)
        except REDIS_FAILURES:
            pass
