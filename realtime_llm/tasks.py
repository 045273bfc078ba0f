"""Ending the tasks a component owns: a generation's helpers (its upstream reader, its lock
heartbeat), and the background loops of the broker, the locks' watchdog, the sessions and
the seats."""
from __future__ import annotations

import asyncio
import contextlib
import logging

logger = logging.getLogger("realtime_llm.generation")


async def finish_task(task: asyncio.Task[None], timeout: float = 2.0) -> None:
    """Wait for a helper task to end, but not forever: a library that swallows a cancel
    must not hang the generation that owns the task."""
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(task)
    except TimeoutError:
        task.cancel()
        logger.warning("a helper task did not stop in %.0fs; left cancelled", timeout)
    except asyncio.CancelledError:
        if not task.done():
            raise  # we ourselves are being cancelled
    except Exception:
        pass  # the helper's own failure was handled where it happened


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """End a background loop its owner started (one that runs until cancelled)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
