"""Rate limits: fixed-window counters, in Redis when there is one (shared by every process),
in this process otherwise.

`hit` counts one event and says whether it is over the limit and for how long. A Redis
failure lets the event through (logged): a limit must not lock every user out while
Redis is away, and the SQL-backed routes keep working then.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from realtime_llm.errors import APIError
from realtime_llm.redisclient import REDIS_FAILURES

logger = logging.getLogger("realtime_llm.ratelimit")

# KEYS[1] = counter; ARGV[1] = window in ms. One round trip: count, then time left.
HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""


class RateLimited(APIError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, what: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(f"too many {what}; try again in {seconds} s", headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


class RateLimiter:
    """In-process counters (one process, no Redis)."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window end, count)

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        """Count one event under `key`; None while within `limit` per `window` seconds,
        else the seconds until the window ends."""
        now = time.monotonic()
        ends, count = self._windows.get(key, (0.0, 0))
        if now >= ends:
            ends, count = now + window, 0
            if len(self._windows) > 10_000:  # forget ended windows now and then
                self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
        count += 1
        self._windows[key] = (ends, count)
        return None if count <= limit else ends - now

    async def check(self, what: str, key: str, limit: int, window: float) -> None:
        """Count one event; raise RateLimited (429, Retry-After) past the limit. 0 = no limit."""
        if limit <= 0:
            return
        wait = await self.hit(key, limit, window)
        if wait is not None:
            raise RateLimited(what, wait)


class RedisRateLimiter(RateLimiter):
    def __init__(self, redis: Any, prefix: str) -> None:
        super().__init__()
        self.redis = redis
        self.prefix = prefix
        self._hit = redis.register_script(HIT)

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        try:
            count, ttl_ms = await self._hit(keys=[f"{self.prefix}:rate:{key}"], args=[int(window * 1000)])
        except REDIS_FAILURES as exc:
            logger.warning("rate limit not checked, Redis unavailable (%s)", type(exc).__name__)
            return None
        return None if int(count) <= limit else max(int(ttl_ms), 0) / 1000
