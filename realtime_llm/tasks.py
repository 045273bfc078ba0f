"""Helper tasks of a generation (its upstream reader, its lock heartbeat): ending one."""
from __future__ import annotations

import asyncio
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
