"""Generations whose process died: their streams are ended for everyone.

A process killed mid-answer leaves its conversation's stream unfinished and its lock to
expire. Where processes share a broker (Redis), every process with subscribers of such a
conversation notices; one takes the lock (so only one does) and publishes the `error`
that ends the stream. (A process alone takes its subscribers with it when it dies.)
"""
from __future__ import annotations

import asyncio
import logging
import os

from realtime_llm.broker.base import Broker, BrokerUnavailable
from realtime_llm.broker.locks import GenerationLocks
from realtime_llm.errors import DATABASE_ERRORS
from realtime_llm.events import BRANCH, ERROR, TERMINAL, TITLE
from realtime_llm.tasks import stop_task

logger = logging.getLogger("realtime_llm.watchdog")

LOST = "the server generating this answer stopped; the answer was lost"


class DeadGenerationWatch:
    def __init__(self, broker: Broker, locks: GenerationLocks, lock_ttl: float) -> None:
        self.broker = broker
        self.locks = locks
        self.interval = max(0.5, lock_ttl / 3)
        self.owner = f"watchdog-{os.getpid()}"
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="dead-generation-watch")

    async def close(self) -> None:
        await stop_task(self._task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for conversation_id in self.broker.watched():
                try:
                    await self.check(conversation_id)
                except (BrokerUnavailable, *DATABASE_ERRORS):  # the next round tries again
                    pass
                except Exception:  # a bug must not end the watch for every conversation
                    logger.exception("dead-generation check of conversation %d failed", conversation_id)

    async def check(self, conversation_id: int) -> None:
        """End the conversation's stream if its generation's process is gone."""
        if conversation_id in self.locks.held_here():  # its generation runs in this process
            return
        if await self.locks.holder(conversation_id) is not None:
            return
        if await self._unfinished(conversation_id) and await self.locks.acquire(conversation_id, self.owner, 5):
            try:
                if await self._unfinished(conversation_id):  # still, now that we hold the lock
                    await self.broker.publish(conversation_id, ERROR, LOST)
            finally:
                await self.locks.release(conversation_id, self.owner)

    async def _unfinished(self, conversation_id: int) -> bool:
        """The conversation's last event says a generation was running (a title or a branch
        switch is published on its own, outside any generation)."""
        last = await self.broker.last_event(conversation_id)
        return last is not None and last.type not in TERMINAL | {TITLE, BRANCH}
