"""Event ids, and their one owner: each conversation's ids increase strictly, across
generations, process restarts and Redis losses (DESIGN.md: what a client resumes from).

The broker's counter (in Redis, or this process's memory) hands them out. It can be lost
(kill -9 without Redis, Redis restarted or flushed, an idle counter expiring), so SQL
keeps a ceiling per conversation that no id handed out is above: ids are reserved in
blocks, RESERVE at a time, a publish coming within HEADROOM of the ceiling raising it
(one SQL write every few hundred events). A lost counter is never restarted from 0: the
publish reports it missing and the counter restarts at the ceiling, whose next block is
reserved before any of its ids goes out.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from realtime_llm.events import Event

logger = logging.getLogger("realtime_llm.broker")

RESERVE = 1000
HEADROOM = 500
MAX_CACHED_CEILINGS = 10_000


@dataclass(frozen=True)
class Gathered:
    """Where an event's long string comes from (EventIds.publish_gathered)."""

    field: str  # "data", or the metadata key
    pieces: str  # the type of the events it is made of
    after: int  # they were published after this event id
    count: int  # and there are this many


class CounterMissing(Exception):
    """The broker holds no event id counter for the conversation: never used, expired, or
    lost (a restart of the process or of Redis). It is restored from the SQL ceiling."""


class EventCeilings(Protocol):
    """Where the highest event id that may have been handed out is kept durably (SQL)."""

    async def event_ceiling(self, conversation_id: int) -> int: ...

    async def raise_event_ceiling(self, conversation_id: int, ceiling: int) -> None: ...


class NoCeilings:
    """For a broker used alone (its own tests): ids start from 1 and are not kept."""

    async def event_ceiling(self, conversation_id: int) -> int:
        return 0

    async def raise_event_ceiling(self, conversation_id: int, ceiling: int) -> None:
        pass


class EventIds(abc.ABC):
    """publish() and the id bookkeeping around it; a broker supplies the counter."""

    def __init__(self) -> None:
        self._ceilings: EventCeilings = NoCeilings()
        self._known_ceiling: dict[int, int] = {}  # this process's view; only ever too low

    def keep_ceilings_in(self, ceilings: EventCeilings) -> None:
        """Where event id reservations are kept (the conversation store); set at start-up."""
        self._ceilings = ceilings

    async def publish(self, conversation_id: int, event_type: str, data: str, **metadata: Any) -> Event:
        """Give the event the conversation's next id, buffer it for replay, deliver it to all."""
        return await self._counted(conversation_id, lambda: self._publish(conversation_id, event_type, data,
                                                                          **metadata))

    async def publish_gathered(self, conversation_id: int, event_type: str, data: str, gathered: Gathered,
                               **metadata: Any) -> Event:
        """Publish an event one of whose strings (`gathered.field`: "data", or a metadata
        key) is the concatenation of the data of `gathered.count` events of type
        `gathered.pieces` published after event `gathered.after`: full_response (the
        answer's message events), done (its `reasoning`). A broker that keeps those events
        may build it from them instead of taking the whole text again."""
        return await self._counted(conversation_id, lambda: self._publish_gathered(
            conversation_id, event_type, data, gathered, **metadata))

    async def last_event_id(self, conversation_id: int) -> int:
        """The id of the conversation's latest event; with its counter lost, the SQL ceiling
        (the next id will be above it). Only reads: subscribing never writes SQL."""
        counter = await self._counter(conversation_id)
        if counter is None:
            return await self._learn_ceiling(conversation_id)
        return counter

    async def ensure_event_floor(self, conversation_id: int, floor: int) -> None:
        """Make sure ids published from now on are larger than `floor`."""
        if await self._counter(conversation_id) is None:
            await self._restore(conversation_id)  # a lost counter comes back from SQL first
        await self._reserve(conversation_id, floor)
        await self._raise_counter(conversation_id, floor)

    async def _counted(self, conversation_id: int, publish: Callable[[], Any]) -> Event:
        if conversation_id not in self._known_ceiling:
            await self._learn_ceiling(conversation_id)
        try:
            event: Event = await publish()
        except CounterMissing:
            await self._restore(conversation_id)
            event = await publish()
        if event.id + HEADROOM > self._known_ceiling.get(conversation_id, 0):
            try:
                await self._reserve(conversation_id, event.id)
            except Exception as exc:  # the ceiling still has room; the next publish tries again
                logger.warning("could not reserve event ids of conversation %d (%s)", conversation_id,
                               type(exc).__name__)
        return event

    async def _learn_ceiling(self, conversation_id: int) -> int:
        if len(self._known_ceiling) >= MAX_CACHED_CEILINGS:
            self._known_ceiling.clear()  # re-read when needed: one SQL read per conversation
        ceiling = await self._ceilings.event_ceiling(conversation_id)
        self._known_ceiling[conversation_id] = max(ceiling, self._known_ceiling.get(conversation_id, 0))
        return ceiling

    async def _restore(self, conversation_id: int) -> int:
        """The counter was lost: it restarts at the SQL ceiling, above any id ever handed out,
        and the next block is reserved before any of its ids goes out."""
        counter = await self._restore_counter(conversation_id, await self._learn_ceiling(conversation_id))
        await self._reserve(conversation_id, counter)
        return counter

    async def _reserve(self, conversation_id: int, event_id: int) -> None:
        ceiling = event_id + RESERVE
        await self._ceilings.raise_event_ceiling(conversation_id, ceiling)
        self._known_ceiling[conversation_id] = ceiling

    @abc.abstractmethod
    async def _publish(self, conversation_id: int, event_type: str, data: str, **metadata: Any) -> Event:
        """publish() without the id bookkeeping; raises CounterMissing instead of starting from 1."""

    async def _publish_gathered(self, conversation_id: int, event_type: str, data: str, gathered: Gathered,
                                **metadata: Any) -> Event:
        return await self._publish(conversation_id, event_type, data, **metadata)

    @abc.abstractmethod
    async def _counter(self, conversation_id: int) -> int | None:
        """The conversation's latest event id, or None when the counter is missing."""

    @abc.abstractmethod
    async def _restore_counter(self, conversation_id: int, floor: int) -> int:
        """Create a missing counter at `floor` (one that exists is kept); returns the counter."""

    @abc.abstractmethod
    async def _raise_counter(self, conversation_id: int, floor: int) -> None:
        """Raise the counter to `floor` if it is below."""
