"""Deletes uploaded files that no message carries once they are older than
`limits.unattached_file_ttl_seconds` (DESIGN.md, Attachments). Every process sweeps; a
delete that another process made first deletes nothing."""
from __future__ import annotations

import asyncio
import logging

from realtime_llm.store.files import FileStore
from realtime_llm.tasks import every, stop_task

logger = logging.getLogger("realtime_llm.files")


class FileSweeper:
    def __init__(self, files: FileStore, ttl_seconds: int) -> None:
        self.files = files
        self.ttl = ttl_seconds
        self.interval = min(600.0, max(0.5, ttl_seconds / 4))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(every(self.interval, self._sweep, "could not sweep unattached files", logger),
                                         name="file-sweeper")

    async def close(self) -> None:
        await stop_task(self._task)

    async def _sweep(self) -> None:
        gone = await self.files.sweep_unattached(self.ttl)
        if gone:
            logger.info("deleted %d file(s) no message carries", gone)
