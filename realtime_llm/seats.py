"""How many WebSockets one user holds open at once, counted in Redis when there is one
(every process sees every socket), in this process otherwise.

In Redis each user has a sorted set of seats, one member per open socket, scored by the
time its lease ends. A process renews the leases of its own sockets every lease/3 seconds
(one task, one pipeline), so the seats of a process that died without closing its sockets
free themselves within a lease (`limits.websocket_seat_lease_seconds`). A Redis failure
lets the socket in (logged), like the rate limits: a limit must not lock users out while
Redis is away; the next renewal puts the seat back once Redis returns.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from typing import AsyncIterator

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from realtime_llm.config import LimitsSettings
from realtime_llm.ratelimit import RateLimited
from realtime_llm.redisclient import REDIS_FAILURES, RedisClient
from realtime_llm.tasks import stop_task

logger = logging.getLogger("realtime_llm.seats")

# KEYS[1] = the user's seats; ARGV = member, limit, lease ms. Expired seats go first.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS = seat sets; ARGV[1] = lease ms, then one member per key. Renews (or restores) each.
RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, until_, ARGV[i + 1])
  redis.call('PEXPIRE', key, ARGV[1])
end
return #KEYS
"""


class TooManySockets(RateLimited):
    def __init__(self, limit: int) -> None:
        super().__init__(f"open sockets (at most {limit} per user); close one first", 1)


class Seats:
    """In-process seats (one process, no Redis)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[int, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, user_id: int) -> AsyncIterator[None]:
        """A seat for one socket of `user_id` while the block runs; TooManySockets past the limit."""
        if self.limit <= 0:
            yield
            return
        if self._held.get(user_id, 0) >= self.limit:
            raise TooManySockets(self.limit)
        self._held[user_id] = self._held.get(user_id, 0) + 1
        try:
            yield
        finally:
            self._held[user_id] -= 1
            if not self._held[user_id]:
                del self._held[user_id]

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class RedisSeats(Seats):
    def __init__(self, limit: int, redis: RedisClient, prefix: str, lease: float) -> None:
        super().__init__(limit)
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)
        self.prefix = prefix
        self.lease_ms = int(lease * 1000)
        self._take = redis.register_script(TAKE)
        self._renew = redis.register_script(RENEW)
        self._mine: dict[str, str] = {}  # member -> key, this process's open seats
        self._names = (f"{os.getpid()}-{os.urandom(4).hex()}-{n}" for n in itertools.count())
        self._renewer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.limit > 0:
            self._renewer = asyncio.create_task(self._renew_forever())

    async def close(self) -> None:
        await stop_task(self._renewer)

    @contextlib.asynccontextmanager
    async def hold(self, user_id: int) -> AsyncIterator[None]:
        if self.limit <= 0:
            yield
            return
        # The user's id as the hash tag: on a Redis Cluster each user's set is in one slot.
        key, member = f"{self.prefix}:{{user:{user_id}}}:seats", next(self._names)
        try:
            taken = await self._take(keys=[key], args=[member, self.limit, self.lease_ms])
        except REDIS_FAILURES as exc:
            logger.warning("socket limit not checked, Redis unavailable (%s)", type(exc).__name__)
            taken = 1
        if not taken:
            raise TooManySockets(self.limit)
        self._mine[member] = key
        try:
            yield
        finally:
            del self._mine[member]
            try:
                async with asyncio.timeout(2):
                    await self.redis.zrem(key, member)
            except REDIS_FAILURES:
                pass  # the lease runs out on its own

    async def renew(self) -> None:
        members = list(self._mine.items())
        # A script's keys must share a slot on a Redis Cluster: one call per slot there.
        groups: dict[int, list[tuple[str, str]]] = {}
        for member, key in members:
            groups.setdefault(key_slot(key.encode()) if self.cluster else 0, []).append((member, key))
        for group in groups.values():
            for start in range(0, len(group), 500):
                chunk = group[start:start + 500]
                await self._renew(keys=[k for _, k in chunk], args=[self.lease_ms, *(m for m, _ in chunk)])
        for member, key in members:  # closed while being renewed: not to be brought back
            if member not in self._mine:
                await self.redis.zrem(key, member)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.renew()
            except REDIS_FAILURES as exc:
                logger.warning("socket seats not renewed, Redis unavailable (%s)", type(exc).__name__)


def create_seats(limits: LimitsSettings, redis: RedisClient | None, prefix: str) -> Seats:
    if redis is None:
        return Seats(limits.websockets_per_user)
    return RedisSeats(limits.websockets_per_user, redis, prefix, limits.websocket_seat_lease_seconds)
