"""Coalescing a model's deltas: one event, one broker round trip, for many tokens.

A delta after a quiet spell goes out at once (no added latency); a burst is held until
the window since the last batch ends, so Redis traffic grows with the answer's length,
not its token count. A reader task of its own lets the window close on time while the
upstream is silent.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterable, AsyncIterator

from realtime_llm.tasks import finish_task


async def coalesce(deltas: AsyncIterable[str], window: float) -> AsyncIterator[str]:
    """The text of `deltas`, those that arrive within `window` seconds of the last batch
    handed out joined into one; an upstream failure is raised after what came before it."""
    queue: asyncio.Queue[str | None | BaseException] = asyncio.Queue()
    reader = asyncio.create_task(_pump(deltas, queue))
    pending: list[str] = []
    last_batch = float("-inf")
    try:
        while True:
            timeout = max(0.0, last_batch + window - time.monotonic()) if pending else None
            try:
                async with asyncio.timeout(timeout):
                    item = await queue.get()
            except TimeoutError:
                item = ""
            if isinstance(item, str) and item:
                pending.append(item)
            if pending and (item is None or isinstance(item, BaseException)
                            or time.monotonic() - last_batch >= window):
                batch = "".join(pending)
                pending.clear()
                yield batch
                last_batch = time.monotonic()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
    finally:
        reader.cancel()
        await finish_task(reader)


async def _pump(deltas: AsyncIterable[str], queue: asyncio.Queue[str | None | BaseException]) -> None:
    try:
        async for delta in deltas:
            queue.put_nowait(delta)
        queue.put_nowait(None)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # handed to the consumer, which raises it in its own task
        queue.put_nowait(exc)
