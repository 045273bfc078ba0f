"""The process's one Redis client, shared by the broker, the history cache, the rate
limits and the WebSocket seats; opened and closed by services.open_services."""
from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime_llm.config import RedisSettings


def redis_client(settings: RedisSettings) -> aioredis.Redis:
    """A client on a blocking pool: under load a call waits for a free connection (up to
    the socket timeout) instead of failing at once with MaxConnectionsError, which had a
    live answer's lock lapse and the answer declared dead."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.connection_url(), max_connections=settings.max_connections, timeout=settings.socket_timeout,
        socket_timeout=settings.socket_timeout, socket_connect_timeout=settings.socket_timeout,
        health_check_interval=30,
        # After Redis restarts, every pooled connection is dead and the first command on
        # each would fail: retry once on a fresh connection. Only connection errors, not
        # timeouts (a slow Redis must not double the wait).
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis(connection_pool=pool)
