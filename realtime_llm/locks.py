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
    renewal = _Renewal(locks, cid, owner, ttl, on_lost)
    try:
        yield
    finally:
        await renewal.end()


class _Renewal:
    """kept_alive's timer and renewal task. Methods, not closures: closures that arm one
    another are a reference cycle, and through `on_lost` it held the whole generation (its
    task and coroutine, its reader, its prompt: about 44 objects a turn) until the
    collector found it, which its middle generation's passes then paid for."""

    def __init__(self, locks: GenerationLocks, cid: int, owner: str, ttl: float,
                 on_lost: Callable[[], None]) -> None:
        self.locks, self.cid, self.owner, self.ttl, self.on_lost = locks, cid, owner, ttl, on_lost
        self.inside = True
        self.task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self.timer = self._loop.call_later(ttl / 3, self._due)

    def _due(self) -> None:
        if self.inside:
            self.task = self._loop.create_task(self._renew())

    async def _renew(self) -> None:
        if not self.inside:  # due, but the block ended before this task started
            return
        pause = self.ttl / 3
        try:
            held = await self.locks.refresh(self.cid, self.owner, self.ttl)
        except Exception:  # a busy or briefly absent broker: try again soon, keep answering
            held, pause = True, min(0.25, self.ttl / 10)
        if not self.inside:
            return
        if not held:
            # Another process holds it now and may start a generation: stop ours (saving it).
            logger.warning("lost the lock of conversation %d; stopping", self.cid)
            self.on_lost()
            return
        self.timer = self._loop.call_later(pause, self._due)

    async def end(self) -> None:
        self.inside = False
        self.timer.cancel()  # (a cancelled timer lets go of its callback: no cycle is left)
        if self.task is not None:
            try:
                await finish_task(self.task)
            except asyncio.CancelledError:
                self.task.cancel()
                raise
