"""Coalescing a model's deltas: one event, one broker round trip, for many tokens.

A delta after a quiet spell goes out at once (no added latency); a burst is held until
the window since the last batch ends, so Redis traffic grows with the answer's length,
not its token count. Thinking (Thought) and answer deltas are never joined: where the
model turns from one to the other, what is held goes out, and the other's first delta
goes out at once. The deltas arrive in an Inbox filled by a reader of their own
(relay.UpstreamReader), so the window closes on time while the upstream is silent, and a
stop, put into the same inbox, is seen at once: nothing is ever cancelled to stop.

An HTTP upstream's reader is itself woken once a window (ChatRequest.batch_window,
upstream_http.Exchange.hold), not for every token: a turn from thinking to answer that
comes within a window reaches the inbox at that window's end.
"""
from __future__ import annotations

import asyncio
from typing import AsyncGenerator, Union

from realtime_llm.providers.base import Thought


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


END = _Marker("END")  # the answer is complete
STOPPED = _Marker("STOPPED")  # stop here: a user's stop, a limit, the lock lost, shutdown
ACCEPTED = _Marker("ACCEPTED")  # the upstream took the request (relay.UpstreamReader)

# What a reader puts into the inbox: text, a marker, or the failure that ended its stream.
Item = Union[str, _Marker, BaseException]


class Stopped(Exception):
    """The answer was stopped before its end; what came before the stop was handed out."""


class Inbox:
    """What an upstream reader hands the generation, in order: text, markers, a failure.
    The reader never waits. The generation is woken once something is due, not for every
    delta: at once for a marker or a failure, for text after a quiet `window` (since the
    last batch was taken), and where the model turns from thinking to answer or back;
    other text when the window ends (one timer a batch). A wake for every delta (an
    asyncio.Queue) cost a task step per token: about 13 % of the event loop's samples at
    50 streams of 1,000-token answers (py-spy, bench.relay_cpu)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._items: list[Item] = []
        self._loop = asyncio.get_running_loop()
        self._due = False  # something put is to be handed out now
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the held text's window, while one is
        self._last_batch = float("-inf")
        self._thinking = False  # the kind of the last text put

    def put_nowait(self, item: Item) -> None:
        if isinstance(item, str):
            if not item:
                return  # nothing to hand out, and no reason to wake anyone
            turned = isinstance(item, Thought) != self._thinking
            self._thinking = isinstance(item, Thought)
            self._items.append(item)
            if not turned and self._loop.time() - self._last_batch < self.window:
                if not self._due and self._timer is None:
                    self._timer = self._loop.call_at(self._last_batch + self.window, self._wake)
                return
        else:
            self._items.append(item)
        self._wake()

    async def take(self) -> list[Item]:
        """Everything put so far, oldest first, once something is due; a batch is taken."""
        await self._until_due()
        items, self._items = self._items, []
        self._due = False
        self._last_batch = self._loop.time()
        self._cancel_timer()
        return items

    async def first(self) -> Item:
        """The oldest item, once one is due (UpstreamReader.accepted: what the upstream did
        with the request); the rest stay, still due."""
        await self._until_due()
        item = self._items.pop(0)
        self._due = bool(self._items)
        return item

    def close(self) -> None:
        self._cancel_timer()

    async def _until_due(self) -> None:
        while not self._due:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        self._cancel_timer()  # (the timer's own call, or made needless by what is due now)
        self._due = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def coalesce(inbox: Inbox) -> AsyncGenerator[str, None]:
    """The text in `inbox` as batches, deltas of one kind (answer, or Thought) taken
    together joined into one (with no window, each delta alone), until END. STOPPED
    raises Stopped and a failure is raised, each after the text that came before it."""
    alone = inbox.window <= 0
    try:
        while True:
            pending: list[str] = []
            thinking = False  # the kind of what is pending
            for item in await inbox.take():
                if isinstance(item, str):
                    if item and pending and (alone or isinstance(item, Thought) != thinking):  # or the model turned
                        yield _joined(pending, thinking)
                    if item:
                        thinking = isinstance(item, Thought)
                        pending.append(item)
                    continue
                if pending:
                    yield _joined(pending, thinking)
                if item is END:
                    return
                if item is STOPPED:
                    raise Stopped()
                if isinstance(item, BaseException):
                    raise item
            if pending:
                yield _joined(pending, thinking)
    finally:
        inbox.close()


def _joined(pending: list[str], thinking: bool) -> str:
    """The pending deltas as one, of their kind; `pending` is emptied."""
    text = "".join(pending)
    pending.clear()
    return Thought(text) if thinking else text
