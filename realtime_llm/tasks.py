"""Ending the tasks a component owns: a generation's helpers (its upstream reader, its lock
heartbeat), and the background loops of the broker, the locks' watchdog, the sessions and
the seats; and the body of a loop that does one thing every so often."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

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


MAX_BACKOFF_SECONDS = 60.0


async def every(interval: float, work: Callable[[], Awaitable[object]], failed: str, log: logging.Logger) -> None:
    """Run `work` every `interval` seconds until cancelled. A failure (the database busy or
    away) is logged as `failed`, with the error's type and first line, and the next round
    tries again, each one after a failure twice as late (up to MAX_BACKOFF_SECONDS): a
    failure that lasts is logged about once a minute, not every round."""
    wait = interval
    while True:
        await asyncio.sleep(wait)
        try:
            await work()
        except Exception as exc:
            detail = str(exc).splitlines()[0] if str(exc) else ""
            log.warning("%s (%s: %s)", failed, type(exc).__name__, detail)
            wait = min(wait * 2, max(MAX_BACKOFF_SECONDS, interval))
        else:
            wait = interval
