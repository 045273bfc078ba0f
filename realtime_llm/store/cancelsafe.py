"""Database work that a cancellation must not cut short. Found by tests/test_fuzz.py.

A stop no longer cancels anything (relay.py), but tasks doing database work are still
cancelled from outside: a WebSocket's reader when its socket ends (it may be saving the
message it just started), an SSE body when its client hangs up, and at shutdown the
generations still running after the grace. `databases` keeps one connection per task,
and two places went wrong when a cancel landed inside them:
- releasing a connection: the backend kept holding it, and every later query of that
  task failed with "Connection is already acquired";
- a transaction, between its statements or during COMMIT: its connection was never
  given back, still in the transaction, and its row locks stayed held, so every other
  writer of that conversation timed out ("database is locked", lock timeout).
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


async def atomically(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` (one transaction) in a task of its own that the caller's cancellation
    does not interrupt: it commits or rolls back and gives its connection back; then the
    cancellation goes on."""
    task = asyncio.ensure_future(work())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


class ReleaseSurvivesCancel:
    """Mixin for a `databases` connection backend: release() runs to its end, then the
    cancellation goes on."""

    async def release(self) -> None:
        releasing = asyncio.ensure_future(super().release())  # type: ignore[misc]
        try:
            await asyncio.shield(releasing)
        except asyncio.CancelledError:
            await asyncio.wait({releasing})
            raise

