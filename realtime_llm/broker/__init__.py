"""Brokers carry a conversation's events to its subscribers: in-process or through Redis."""
from __future__ import annotations

from typing import TYPE_CHECKING

from realtime_llm.broker.base import Broker, SubscriberOverflow, Subscription
from realtime_llm.config import Settings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["Broker", "Subscription", "SubscriberOverflow", "create_broker"]


def create_broker(settings: Settings, redis: aioredis.Redis | None) -> Broker:
    """The broker configuration asks for (Redis when the process has a client for it);
    implementations are imported only when chosen."""
    if redis is not None:
        from realtime_llm.broker.redis import RedisBroker

        return RedisBroker(settings, redis)
    from realtime_llm.broker.memory import MemoryBroker

    return MemoryBroker(settings.stream)
