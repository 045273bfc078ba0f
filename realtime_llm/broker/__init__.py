"""Brokers carry a conversation's events to its subscribers, and its generation lock and
stop requests between processes: in-process, or through Redis."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from redis.asyncio.cluster import RedisCluster

from realtime_llm.broker.base import Broker, SubscriberOverflow, Subscription
from realtime_llm.broker.locks import GenerationLocks, MemoryLocks
from realtime_llm.config import Settings

if TYPE_CHECKING:
    from realtime_llm.redisclient import RedisClient

__all__ = ["Broker", "GenerationLocks", "Subscription", "SubscriberOverflow", "open_broker"]


async def open_broker(settings: Settings, redis: RedisClient | None,
                      stack: contextlib.AsyncExitStack) -> tuple[Broker, GenerationLocks]:
    """The event broker and the generation locks configuration asks for (through Redis when
    the process has a client for it), started, their closing pushed onto `stack`.
    Implementations are imported only when chosen."""
    broker: Broker
    locks: GenerationLocks
    if redis is None:
        from realtime_llm.broker.memory import MemoryBroker

        locks = MemoryLocks()
        broker = MemoryBroker(settings.stream, generating=locks.held_here)
    else:
        from realtime_llm.broker.pubsub import PubSub, RedisPubSub
        from realtime_llm.broker.redis import RedisBroker
        from realtime_llm.broker.redis_locks import RedisLocks
        from realtime_llm.broker.shardedpubsub import ShardedPubSub

        pubsub: PubSub
        if isinstance(redis, RedisCluster):  # events and stop requests on sharded channels
            pubsub = ShardedPubSub(redis, settings.redis.key_prefix)
        else:
            pubsub = RedisPubSub(redis, settings.redis.key_prefix)
        await pubsub.start()
        stack.push_async_callback(pubsub.close)
        broker = RedisBroker(settings, redis, pubsub)
        locks = RedisLocks(redis, settings.redis.key_prefix, pubsub)
    await broker.start()
    stack.push_async_callback(broker.close)
    await locks.start()
    stack.push_async_callback(locks.close)
    if redis is not None:  # processes share conversations: one may die mid-answer
        from realtime_llm.watchdog import DeadGenerationWatch

        watch = DeadGenerationWatch(broker, locks, settings.stream.lock_ttl_seconds)
        await watch.start()
        stack.push_async_callback(watch.close)
    return broker, locks
