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
    """Renew the lock every ttl/3 while inside; `on_lost()` when another holder has it."""
    done = asyncio.Event()

    async def heartbeat() -> None:
        # Ends on `done`, not only on cancel: a cancel that lands inside a client's own
        # timeout handling can be swallowed (Python 3.11), and this must still stop.
        pause = ttl / 3
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await done.wait()
            if done.is_set():
                return
            try:
                held = await locks.refresh(cid, owner, ttl)
            except Exception:  # a busy or briefly absent broker: try again soon, keep answering
                pause = min(0.25, ttl / 10)
                continue
            pause = ttl / 3
            if not held:
                # Another process holds it now and may start a generation: stop ours (saving it).
                logger.warning("lost the lock of conversation %d; stopping", cid)
                on_lost()
                return

    beating = asyncio.create_task(heartbeat())
    try:
        yield
    finally:
        done.set()
        await finish_task(beating)
