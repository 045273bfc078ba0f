"""Coalescing a model's deltas: one event, one broker round trip, for many tokens.

A delta after a quiet spell goes out at once (no added latency); a burst is held until
the window since the last batch ends, so Redis traffic grows with the answer's length,
not its token count. Thinking (Thought) and answer deltas are never joined: where the
model turns from one to the other, what is held goes out, and the other's first delta
goes out at once. The deltas arrive in a queue filled by a reader of their own
(relay.UpstreamReader), so the window closes on time while the upstream is silent, and a
stop, put into the same queue, is seen at once: nothing is ever cancelled to stop.
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

# What a reader puts into the queue: text, a marker, or the failure that ended its stream.
Item = Union[str, _Marker, BaseException]


class Stopped(Exception):
    """The answer was stopped before its end; what came before the stop was handed out."""


class _Tick(_Marker):
    """The end of one batch window: its timer puts it into the queue."""


async def coalesce(queue: asyncio.Queue[Item], window: float) -> AsyncGenerator[str, None]:
    """The text in `queue`, deltas of one kind (answer, or Thought) that arrive within
    `window` seconds of the last batch joined into one, until END. STOPPED raises Stopped
    and a failure is raised, each after the text that came before it.

    A held batch has one timer, which puts a _Tick into the queue when the window ends: one
    timer a batch rather than a timeout around every wait (which cost 6 % of the server's
    CPU at 50 streams, py-spy, bench.relay_cpu). A tick of a batch that went out earlier is
    ignored."""
    loop = asyncio.get_running_loop()
    pending: list[str] = []
    thinking = False  # the kind of what is pending
    last_batch = float("-inf")
    tick: _Tick | None = None  # the current window's, while a batch is held
    timer: asyncio.TimerHandle | None = None
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _Tick):
                if item is not tick:
                    continue
                tick = None
            elif isinstance(item, str):
                if item and pending and isinstance(item, Thought) != thinking:  # the model turned
                    yield _joined(pending, thinking)
                    last_batch = float("-inf")
                if item:
                    thinking = isinstance(item, Thought)
                    pending.append(item)
                if not pending:
                    continue
                if loop.time() - last_batch < window:
                    if tick is None:
                        tick = _Tick("TICK")
                        timer = loop.call_at(last_batch + window, queue.put_nowait, tick)
                    continue
            if pending:
                yield _joined(pending, thinking)
                last_batch = loop.time()
            if timer is not None:  # the batch went out: its window's timer is done with
                timer.cancel()
                timer, tick = None, None
            if item is END:
                return
            if item is STOPPED:
                raise Stopped()
            if isinstance(item, BaseException):
                raise item
    finally:
        if timer is not None:
            timer.cancel()


def _joined(pending: list[str], thinking: bool) -> str:
    """The pending deltas as one, of their kind; `pending` is emptied."""
    text = "".join(pending)
    pending.clear()
    return Thought(text) if thinking else text
