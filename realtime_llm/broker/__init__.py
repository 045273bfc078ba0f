"""Brokers carry a conversation's events to its subscribers: in-process or through Redis."""
from __future__ import annotations

from realtime_llm.broker.base import Broker, SubscriberOverflow, Subscription
from realtime_llm.config import Settings

__all__ = ["Broker", "Subscription", "SubscriberOverflow", "create_broker"]


def create_broker(settings: Settings) -> Broker:
    """The broker configuration asks for; implementations are imported only when chosen."""
    if settings.redis.enabled:
        from realtime_llm.broker.redis import RedisBroker

        return RedisBroker(settings)
    from realtime_llm.broker.memory import MemoryBroker

    return MemoryBroker(settings.stream)
