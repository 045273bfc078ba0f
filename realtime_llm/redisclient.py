"""The process's one Redis client, shared by the broker, the history cache, the rate
limits, the stream tickets and the WebSocket seats; opened and closed by
services.open_services. A single Redis, or a Redis Cluster (`redis.cluster_nodes`)."""
from __future__ import annotations

from typing import TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime_llm.config import RedisSettings
from realtime_llm.redispipeline import PipelinedConnection, PipelinedRedis

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"
# What a Redis call can fail with: its own errors, the cluster client's (a slot without a
# master during a failover is not a RedisError), the socket's, a timeout.
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError, TimeoutError)


def redis_client(settings: RedisSettings) -> RedisClient:
    return cluster_client(settings) if settings.cluster else single_client(settings)


def single_client(settings: RedisSettings) -> aioredis.Redis:
    """A client on a blocking pool: under load a call waits for a free connection (up to
    the socket timeout) instead of failing at once with MaxConnectionsError, which had a
    live answer's lock lapse and the answer declared dead. Its Lua scripts (every event
    published, the locks' renewals, the cache's appends, ...) go over one pipelined
    connection instead (redispipeline.py), on plain TCP or a unix socket."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.connection_url(), max_connections=settings.max_connections, timeout=settings.socket_timeout,
        socket_timeout=settings.socket_timeout, socket_connect_timeout=settings.socket_timeout,
        health_check_interval=30,
        # After Redis restarts, every pooled connection is dead and the first command on
        # each would fail: retry once on a fresh connection. Only connection errors, not
        # timeouts (a slow Redis must not double the wait).
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    if PipelinedConnection.supports(settings.connection_url()):  # its Lua scripts pipelined on one connection
        return PipelinedRedis(PipelinedConnection(settings.connection_url(), settings.socket_timeout),
                              connection_pool=pool)
    return aioredis.Redis(connection_pool=pool)


class OnceOnTimeoutCluster(RedisCluster):
    """redis-py's cluster client, which retries a command that timed out, too: a publish
    script that ran but whose answer was late would run again, and its event go out twice
    under two ids. A timeout is a failure here, as it is on one Redis (single_client). A
    cluster down or a slot without a master are retried, and a connection error, as on one
    Redis: mostly a refused connection, where nothing ran; rarely one broken after the
    command was sent, which may then run twice. (This covers commands and scripts; a
    pipeline keeps redis-py's own retries: the store uses none whose repeat would matter.)"""

    # (redis-py types the attribute as exactly its own four errors)
    ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]


def cluster_client(settings: RedisSettings) -> RedisCluster:
    """redis-py's cluster client: it learns the slots from any node given, sends each
    command to the master of its key's slot, and follows MOVED and ASK (a slot migrated)
    and failovers (the slot map read again), a few times before a call fails."""
    return OnceOnTimeoutCluster(
        startup_nodes=[ClusterNode(host, int(port)) for host, _, port in
                       (node.rpartition(":") for node in settings.cluster_nodes)],
        password=settings.password or None, max_connections=settings.max_connections,
        socket_timeout=settings.socket_timeout, socket_connect_timeout=settings.socket_timeout,
        health_check_interval=30,
        # A failed node is retried (its slot map read again) for about 2.5 s in all, then the
        # call fails: a failover longer than that ends the streams on that shard (they
        # resume) rather than stalling them (redis-py's default waits far longer).
        retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=1.0), 5),
    )


def node_client(cluster: RedisCluster, host: str, port: int) -> aioredis.Redis:
    """A plain client on one node of the cluster (its own connections: a pub/sub connection
    is held for as long as its subscriptions)."""
    kwargs = cluster.connection_kwargs
    # No retries: a master that fails is reported at once (its replica takes over the slot,
    # and the channel is subscribed there), not reconnected to for seconds.
    return aioredis.Redis(host=host, port=port, password=kwargs.get("password"),
                          socket_timeout=kwargs.get("socket_timeout"),
                          socket_connect_timeout=kwargs.get("socket_connect_timeout"), retry=Retry(NoBackoff(), 0),
                          socket_keepalive=True)
