"""The one-generation-per-conversation lock, as a generation holds it: taken with a little
patience, renewed while the answer runs, so that only a dead process lets it expire."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator, Callable

from realtime_llm.broker import GenerationLocks
from realtime_llm.tasks import finish_task

logger = logging.getLogger("realtime_llm.generation")


async def take_lock(locks: GenerationLocks, cid: int, owner: str, ttl: float, patience: float = 0.3) -> bool:
    """Take the lock; if it is held, wait a moment in case its generation is just
    finishing (its client saw full_response a hair before the lock was released)."""
    deadline = time.monotonic() + patience
    while not await locks.acquire(cid, owner, ttl):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@contextlib.asynccontextmanager
async def kept_alive(locks: GenerationLocks, cid: int, owner: str, ttl: float,
                     on_lost: Callable[[], None]) -> AsyncIterator[None]:
    """Renew the lock every ttl/3 while inside; `on_lost()` when another holder has it.

    A timer waits for each renewal and a task runs only the renewal itself: most answers
    end before the first one is due, and a task waiting out each of them (its event, its
    timeout, the wait for it to end) was there for every turn. On the way out none is armed
    any more, and a renewal under way is waited for (finish_task), or cancelled if this is:
    one that reached Redis after the lock's release would take it again."""
    loop = asyncio.get_running_loop()
    inside = True
    renewal: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle

    async def renew() -> None:
        if not inside:  # due, but the block ended before this task started
            return
        pause = ttl / 3
        try:
            held = await locks.refresh(cid, owner, ttl)
        except Exception:  # a busy or briefly absent broker: try again soon, keep answering
            held, pause = True, min(0.25, ttl / 10)
        if not inside:
            return
        if not held:
            # Another process holds it now and may start a generation: stop ours (saving it).
            logger.warning("lost the lock of conversation %d; stopping", cid)
            on_lost()
            return
        arm(pause)

    def due() -> None:
        nonlocal renewal
        if inside:
            renewal = loop.create_task(renew())

    def arm(pause: float) -> None:
        nonlocal timer
        timer = loop.call_later(pause, due)

    timer = loop.call_later(ttl / 3, due)
    try:
        yield
    finally:
        inside = False
        timer.cancel()
        if renewal is not None:
            try:
                await finish_task(renewal)
            except asyncio.CancelledError:
                renewal.cancel()
                raise
