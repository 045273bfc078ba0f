"""The generation lock of a conversation, and the channel that asks its holder to stop.

One generation per conversation, across every process: whoever starts one takes the lock
(with an expiry, renewed while the answer runs: locks.py at the package's top), and
listens for stop requests, which any process may send (a Stop button, a deleted
conversation). In-process for one process; through Redis (redis_locks.py) for several.
"""
from __future__ import annotations

import abc
import contextlib
import time
from typing import AsyncContextManager, AsyncIterator, Callable, Collection


class GenerationLocks(abc.ABC):
    name = "locks"

    async def start(self) -> None:  # noqa: B027  (optional: the in-process locks open nothing)
        """Open connections; called once from the lifespan."""

    async def close(self) -> None:  # noqa: B027
        """Close what start() opened."""

    @abc.abstractmethod
    async def acquire(self, conversation_id: int, owner: str, ttl: float) -> bool:
        """Take the conversation's lock unless someone holds it; it expires after ttl."""

    @abc.abstractmethod
    async def refresh(self, conversation_id: int, owner: str, ttl: float) -> bool:
        """Extend a lock this owner holds; False if another holder has it now."""

    @abc.abstractmethod
    async def release(self, conversation_id: int, owner: str) -> None:
        """Release the lock if this owner still holds it."""

    @abc.abstractmethod
    async def holder(self, conversation_id: int) -> str | None:
        """Who holds the conversation's lock, if anyone: a generation is running."""

    @abc.abstractmethod
    def held_here(self) -> Collection[int]:
        """Conversations whose lock this process holds: their generations run here."""

    @abc.abstractmethod
    def on_stop(self, conversation_id: int, callback: Callable[[], None]) -> AsyncContextManager[None]:
        """While inside, `callback` runs when a stop is requested for the conversation."""

    @abc.abstractmethod
    async def request_stop(self, conversation_id: int) -> bool:
        """Ask whoever runs the conversation's generation to stop it; True if someone listened."""


class MemoryLocks(GenerationLocks):
    """One process's locks, in dictionaries; every step is free of awaits, hence atomic."""

    name = "in-process"

    def __init__(self) -> None:
        self._locks: dict[int, tuple[str, float]] = {}  # conversation -> (owner, expires at)
        self._stop_callbacks: dict[int, set[Callable[[], None]]] = {}

    async def acquire(self, conversation_id: int, owner: str, ttl: float) -> bool:
        if await self.holder(conversation_id) is not None:
            return False
        self._locks[conversation_id] = (owner, time.monotonic() + ttl)
        return True

    async def refresh(self, conversation_id: int, owner: str, ttl: float) -> bool:
        """As with Redis: a lapsed lock that nobody else took is this owner's again."""
        held = self._locks.get(conversation_id)
        if held is not None and held[0] != owner and held[1] > time.monotonic():
            return False
        self._locks[conversation_id] = (owner, time.monotonic() + ttl)
        return True

    async def release(self, conversation_id: int, owner: str) -> None:
        held = self._locks.get(conversation_id)
        if held is not None and held[0] == owner:
            del self._locks[conversation_id]

    async def holder(self, conversation_id: int) -> str | None:
        held = self._locks.get(conversation_id)
        return held[0] if held is not None and held[1] > time.monotonic() else None

    def held_here(self) -> Collection[int]:
        return set(self._locks)  # a lapsed one too: its generation may still run (refresh takes it back)

    @contextlib.asynccontextmanager
    async def on_stop(self, conversation_id: int, callback: Callable[[], None]) -> AsyncIterator[None]:
        callbacks = self._stop_callbacks.setdefault(conversation_id, set())
        callbacks.add(callback)
        try:
            yield
        finally:
            callbacks.discard(callback)
            if not callbacks:
                del self._stop_callbacks[conversation_id]

    async def request_stop(self, conversation_id: int) -> bool:
        callbacks = list(self._stop_callbacks.get(conversation_id, ()))
        for callback in callbacks:
            callback()
        return bool(callbacks)
