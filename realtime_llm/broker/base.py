"""What every broker does: publish a conversation's events with ids, subscribe with replay.
(The generation lock and the stop signal are broker/locks.py.)"""
from __future__ import annotations

import abc
import asyncio
import collections
from typing import AsyncContextManager, Callable, Collection, Iterable

from realtime_llm.broker.eventids import EventIds
from realtime_llm.errors import ServiceUnavailable
from realtime_llm.events import BRANCH, RESYNC, TRUNCATE, Event, make_event


class SubscriberOverflow(Exception):
    """The subscriber fell further behind than its queue allows and was cut off."""


class ConversationGone(Exception):
    """The conversation was deleted while subscribed."""


class BrokerUnavailable(ServiceUnavailable):
    """The broker's backing service cannot be reached."""

    def __init__(self, message: str = "the message broker is unavailable; try again shortly") -> None:
        super().__init__(message)


class ShuttingDown(Exception):
    """This server process is shutting down; reconnect (to another one) and resume."""


class SessionEnded(Exception):
    """The token the stream was opened with was logged out, or expired."""


class Subscription:
    """One subscriber's events: the replayed backlog first, then live events, bounded in
    count and in bytes. The byte bound is checked before an event is added, so one event
    larger than the bound (a long answer's full_response) still reaches a reader that keeps
    up; what a subscriber holds stays under the bound plus one event.

    A reader may give a `sink`: while it waits for the next event with nothing queued, a
    live event goes to the sink at once (a socket writes it to its connection) instead of
    through the queue and a wake-up of the reader. The sink says False when it cannot take
    it now (its connection's buffer is full, it is closing): then the event is queued and
    the reader, and its bounds, take over as before.

    The queue is a deque and a waiting reader one future with a timer: every event of
    every SSE stream passes here, and an asyncio.Queue with an asyncio.timeout around each
    wait cost about 5 µs of it (a timeit under uvloop)."""

    __slots__ = ("conversation_id", "last_id", "_backlog", "_queue", "_max_queue", "_max_bytes", "_queued_bytes",
                 "_failure", "_waiter", "cut_off", "sink")

    def __init__(self, conversation_id: int, max_queue: int, max_bytes: int = 2**62,
                 backlog: Iterable[Event] = ()) -> None:
        self.conversation_id = conversation_id
        self.last_id = 0
        self._backlog = collections.deque(backlog)
        self._queue: collections.deque[Event] = collections.deque()
        self._max_queue = max_queue
        self._max_bytes = max_bytes
        self._queued_bytes = 0
        self._failure: Exception | None = None
        self._waiter: asyncio.Future[bool] | None = None  # the reader's, while it waits in get(): True if timed out
        self.cut_off = asyncio.Event()  # set by fail(): a reader blocked elsewhere can see it
        self.sink: Callable[[Event], bool] | None = None

    @property
    def failure(self) -> Exception | None:
        return self._failure

    def add_backlog(self, events: Iterable[Event]) -> None:
        """Replayed events, delivered before anything live (repeats are dropped by id)."""
        self._backlog.extend(events)

    def deliver(self, event: Event) -> None:
        """Called by the broker for each live event; never blocks."""
        if self._failure is not None:
            return
        if self.sink is not None and self._waiter is not None and not self._backlog and not self._queue:
            if event.id <= self.last_id:  # a repeat (replay and live overlap): get() drops it too
                return
            try:
                taken = self.sink(event)
            except Exception:  # one socket's failure is its own: it goes the queue's way from now on
                self.sink, taken = None, False
            if taken:
                self.last_id = event.id
                return
        if self._queued_bytes > self._max_bytes or len(self._queue) >= self._max_queue:
            self.fail(SubscriberOverflow("subscriber fell behind"))
            return
        self._queue.append(event)
        self._queued_bytes += len(event.json)
        self._wake()

    def fail(self, error: Exception) -> None:
        """End the subscription: the reader gets `error` once it has no events in hand,
        and `cut_off` is set for a reader that is stuck sending the last one."""
        if self._failure is not None:
            return
        self._failure = error
        self.cut_off.set()
        self._queue.clear()  # the reader is cut off: what it has not taken is dropped
        self._queued_bytes = 0
        self._wake()

    def end(self, error: Exception) -> None:
        """End the subscription after the events already queued: on shutdown, the last
        events of an answer still reach the reader, then `error`."""
        if self._failure is not None:
            return
        self._failure = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            _wake_up(self._waiter, False)

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event after the last one returned, or None when `timeout` passes first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        timed_out = False
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            if self._failure is not None:
                raise self._failure
            if timed_out:  # (the timer says so: the clock, re-read, may be a hair short of the deadline)
                return None
            if self._waiter is not None:
                raise RuntimeError("a subscription has one reader at a time")
            waiter = self._waiter = loop.create_future()
            # (a socket's pump waits without a timeout, for every event of every socket: no timer)
            timer = None if deadline is None else loop.call_at(deadline, _wake_up, waiter, True)
            try:
                timed_out = await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def get_nowait(self) -> Event | None:
        """The next event after the last one returned if one is at hand; None if get()
        would wait (or raise the failure that ended the subscription)."""
        while self._backlog:
            event = self._unseen(self._backlog.popleft())
            if event is not None:
                return event
        while self._queue:
            event = self._queue.popleft()
            self._queued_bytes -= len(event.json)
            if self._unseen(event) is not None:
                return event
        return None

    def _unseen(self, event: Event) -> Event | None:
        if event.id <= self.last_id:  # replay and live may overlap at the seam; drop repeats
            return None
        self.last_id = event.id
        return event


def _wake_up(waiter: asyncio.Future[bool], timed_out: bool) -> None:
    if not waiter.done():
        waiter.set_result(timed_out)


def resync_before(conversation_id: int, after: int, buffered: list[Event], latest: int) -> list[Event]:
    """`buffered` (the replay buffer's events after `after`), led by a `resync` event when
    the buffer no longer holds some events after `after` (trimmed, expired, lost with a
    Redis or a process): the client re-reads the history, then the rest follows. Its id is
    the one before what follows, so a resume from it needs no second one. Not for a client
    resuming from 0 (it reads the history anyway), nor when the first event kept is a
    truncate or branch (the buffer was emptied on purpose before it: it says what to do)."""
    if after <= 0:
        return buffered
    if buffered:
        first = buffered[0]
        if first.id == after + 1 or first.type in (TRUNCATE, BRANCH):
            return buffered
        return [make_event(first.id - 1, RESYNC, "", conversation_id=conversation_id), *buffered]
    if latest <= after:
        return buffered
    return [make_event(latest, RESYNC, "", conversation_id=conversation_id)]


class Broker(EventIds):
    """Carries events of conversations between generations and subscribers.

    Every implementation keeps this process's subscriptions in `_local`, so that ending
    them (on delete, on shutdown, when the backing service fails) works the same way.
    """

    name = "broker"

    def __init__(self) -> None:
        super().__init__()
        self._local: dict[int, set[Subscription]] = {}

    def _add_local(self, subscription: Subscription) -> bool:
        """Register a subscription; True if it is the conversation's first in this process."""
        subscriptions = self._local.setdefault(subscription.conversation_id, set())
        subscriptions.add(subscription)
        return len(subscriptions) == 1

    def _remove_local(self, subscription: Subscription) -> bool:
        """Unregister a subscription; True if it was the conversation's last in this process."""
        subscriptions = self._local.get(subscription.conversation_id)
        if subscriptions is None:
            return False
        subscriptions.discard(subscription)
        if subscriptions:
            return False
        del self._local[subscription.conversation_id]
        return True

    def _deliver_local(self, conversation_id: int, event: Event) -> None:
        for subscription in self._local.get(conversation_id, ()):
            subscription.deliver(event)

    def _fail_local(self, conversation_id: int | None, error: Exception) -> None:
        """End this process's subscriptions of one conversation, or of all (None)."""
        if conversation_id is None:
            groups = list(self._local.values())
        else:
            groups = [self._local.get(conversation_id, set())]
        for subscriptions in groups:
            for subscription in list(subscriptions):
                subscription.fail(error)

    def watched(self) -> list[int]:
        """Conversations with subscribers in this process."""
        return list(self._local)

    def end_subscriptions(self, error: Exception, keep: Collection[int] = ()) -> None:
        """On shutdown: this process's streams and sockets end (sockets close 1001) once they
        have read what is queued for them; those of the conversations in `keep` stay."""
        for conversation_id, subscriptions in list(self._local.items()):
            if conversation_id not in keep:
                for subscription in list(subscriptions):
                    subscription.end(error)

    async def start(self) -> None:
        """Open connections and background tasks; called once from the lifespan."""

    async def close(self) -> None:
        """Close what start() opened."""

    async def ping(self) -> None:
        """Raise BrokerUnavailable if the backing service does not answer."""

    @abc.abstractmethod
    def subscribe(self, conversation_id: int, after: int | None = None) -> AsyncContextManager[Subscription]:
        """Live events from now on; with `after`, first every buffered event with a larger id."""

    @abc.abstractmethod
    async def replay(self, conversation_id: int, after: int) -> list[Event]:
        """The buffered events with ids above `after`, oldest first."""

    async def resume(self, conversation_id: int, after: int) -> list[Event]:
        """What a client resuming after `after` is sent: the buffered events, led by a
        `resync` where the buffer misses some (resync_before)."""
        # The latest id is read before the buffer: read after it, an event published in
        # between would be taken for missing, and its resync (with its id) would have the
        # subscription drop the event itself as a repeat.
        latest = await self.last_event_id(conversation_id) if after > 0 else 0
        buffered = await self.replay(conversation_id, after)
        return resync_before(conversation_id, after, buffered, latest)

    @abc.abstractmethod
    async def last_event(self, conversation_id: int) -> Event | None:
        """The newest event the replay buffer holds, if any."""

    @abc.abstractmethod
    async def clear_replay(self, conversation_id: int) -> None:
        """Empty the conversation's replay buffer; its event ids go on counting up."""

    @abc.abstractmethod
    async def drop(self, conversation_id: int) -> None:
        """Forget the conversation: its buffer, its counter; end its subscriptions."""
