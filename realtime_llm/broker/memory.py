"""The in-process broker: one process, no Redis; the embedded default. (Its generation
locks: broker/locks.py, MemoryLocks.)"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Collection

from realtime_llm.broker.base import Broker, ConversationGone, Subscription, resync_before
from realtime_llm.broker.eventids import CounterMissing
from realtime_llm.config import StreamSettings
from realtime_llm.events import SETTLING, Event, make_event
from realtime_llm.metrics import count_published
from realtime_llm.tasks import stop_task


@dataclass
class _Channel:
    buffer: collections.deque[Event]
    last_id: int | None = None  # None: not counted in this process yet (restored from SQL)
    touched: float = field(default_factory=time.monotonic)
    settled: float | None = None  # when its latest event was a settling one (events.SETTLING)


def _newer(buffer: collections.deque[Event], after: int) -> list[Event]:
    """The buffered events with ids above `after`, oldest first: read from the newest end
    (ids rise along the buffer), so a subscriber that saw nearly all of up to
    replay_events costs the few it missed, not the whole buffer, every turn."""
    newer = list(itertools.takewhile(lambda event: event.id > after, reversed(buffer)))
    newer.reverse()
    return newer


class MemoryBroker(Broker):
    """Everything in dictionaries of this process; every step is free of awaits, hence atomic."""

    name = "in-process"

    def __init__(self, settings: StreamSettings, generating: Callable[[], Collection[int]] = set) -> None:
        """`generating()`: the conversations whose generation runs (their buffers are kept)."""
        super().__init__()
        self.settings = settings
        self._generating = generating
        self._channels: dict[int, _Channel] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="memory-broker-sweeper")

    async def close(self) -> None:
        await stop_task(self._sweeper)

    def _channel(self, conversation_id: int) -> _Channel:
        channel = self._channels.get(conversation_id)
        if channel is None:
            channel = _Channel(buffer=collections.deque(maxlen=self.settings.replay_events))
            self._channels[conversation_id] = channel
        channel.touched = time.monotonic()
        return channel

    async def _publish(self, conversation_id: int, event_type: str, data: str, **metadata: Any) -> Event:
        channel = self._channel(conversation_id)
        if channel.last_id is None:
            raise CounterMissing()
        count_published(event_type)
        channel.last_id += 1
        event = make_event(channel.last_id, event_type, data, conversation_id=conversation_id, **metadata)
        channel.buffer.append(event)
        channel.settled = time.monotonic() if event_type in SETTLING else None
        self._deliver_local(conversation_id, event)
        return event

    @contextlib.asynccontextmanager
    async def subscribe(self, conversation_id: int, after: int | None = None) -> AsyncIterator[Subscription]:
        baseline = await self.last_event_id(conversation_id)  # may read SQL
        # From here to _add_local nothing awaits: no event can fall between baseline and live.
        channel = self._channel(conversation_id)
        backlog = []
        if after is not None:
            latest = channel.last_id if channel.last_id is not None else baseline
            backlog = resync_before(conversation_id, after, _newer(channel.buffer, after), latest)
        subscription = Subscription(conversation_id, self.settings.subscriber_queue,
                                    self.settings.subscriber_queue_bytes, backlog)
        if after is None:
            subscription.last_id = channel.last_id if channel.last_id is not None else baseline
        self._add_local(subscription)
        try:
            yield subscription
        finally:
            self._remove_local(subscription)

    async def replay(self, conversation_id: int, after: int) -> list[Event]:
        return _newer(self._channel(conversation_id).buffer, after)

    async def _counter(self, conversation_id: int) -> int | None:
        return self._channel(conversation_id).last_id

    async def _restore_counter(self, conversation_id: int, floor: int) -> int:
        channel = self._channel(conversation_id)
        if channel.last_id is None:
            channel.last_id = floor
        return channel.last_id

    async def _raise_counter(self, conversation_id: int, floor: int) -> None:
        channel = self._channel(conversation_id)
        channel.last_id = max(channel.last_id or 0, floor)

    async def last_event(self, conversation_id: int) -> Event | None:
        channel = self._channels.get(conversation_id)  # a look, not a use: nothing is created
        return channel.buffer[-1] if channel is not None and channel.buffer else None

    async def clear_replay(self, conversation_id: int) -> None:
        self._channel(conversation_id).buffer.clear()

    async def drop(self, conversation_id: int) -> None:
        self._channels.pop(conversation_id, None)
        self._fail_local(conversation_id, ConversationGone("conversation deleted"))

    async def _sweep_idle(self) -> None:
        """Drop the conversations nobody has touched for replay_ttl_seconds, and empty the
        replay buffers of those settled (an answer saved) replay_grace_seconds ago: only the
        id counter stays, so a resume from before gets `resync` (nothing is missed quietly)."""
        ttl, grace = self.settings.replay_ttl_seconds, self.settings.replay_grace_seconds
        while True:
            await asyncio.sleep(min(60.0, grace / 2, ttl / 2))
            now = time.monotonic()
            busy = self._generating()
            for conversation_id, channel in list(self._channels.items()):
                if conversation_id in busy:
                    continue
                if conversation_id not in self._local and channel.touched < now - ttl:
                    del self._channels[conversation_id]
                elif channel.settled is not None and channel.settled < now - grace and channel.buffer:
                    channel.buffer = collections.deque(maxlen=self.settings.replay_events)  # its memory freed
