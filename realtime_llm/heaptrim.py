"""Giving the heap's freed memory back to the system once the process is quiet.

Python frees an answer's objects as soon as it is saved, but glibc's allocator keeps the
pages they held: only the top of its heap goes back by itself, and a heap that a busy
minute fragmented stays at its high-water mark. (bench.replay_memory, 1,000 conversations
of 20 turns: the server's RSS stayed 63 MiB above idle, 49 MiB of it free heap that
malloc_trim gave back.) So when the process has been quiet for a look's interval (it used
less than QUIET of a core: no answers, fan-out or requests to speak of) and the allocator
holds GROWTH bytes more free than it did at its lowest since the last trim,
malloc_trim(0) returns the free pages, on a worker thread. Never under load: a trim holds
the allocator's lock for a few milliseconds (14 ms for a 140 MiB heap fragmented to one
part in twenty here, 4 ms with nothing to give back); a look costs a tenth of one.

Only with glibc 2.33 or newer (malloc_trim, mallinfo2); elsewhere nothing is started.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from typing import Any

import anyio

from realtime_llm.tasks import stop_task

logger = logging.getLogger("realtime_llm.heaptrim")

INTERVAL = 2.0  # seconds between looks
QUIET = 0.05  # of a core's time, at most, over the last interval
GROWTH = 8 * 1024 * 1024  # bytes newly free in the allocator that are worth a trim


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallinfo2.argtypes, libc.mallinfo2.restype = [], _MallInfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None
    return libc


class HeapTrimmer:
    def __init__(self, interval: float = INTERVAL, growth: int = GROWTH) -> None:
        self.interval = interval
        self.growth = growth
        self._libc = _glibc()
        self._task: asyncio.Task[None] | None = None
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._libc is not None

    async def start(self) -> None:
        if self.available:
            self._task = asyncio.create_task(self._run(self.free_bytes()), name="heap-trimmer")

    async def close(self) -> None:
        await stop_task(self._task)

    def free_bytes(self) -> int:
        """What the allocator holds free, in every arena: pages already given back too."""
        return int(self._libc.mallinfo2().fordblks) if self.available else 0

    def trim(self) -> None:
        if self.available:
            self._libc.malloc_trim(0)
            self.trims += 1

    async def _run(self, lowest: int) -> None:
        used = time.process_time()
        while True:
            await asyncio.sleep(self.interval)
            before, used = used, time.process_time()
            free = self.free_bytes()
            lowest = min(lowest, free)
            if used - before > QUIET * self.interval or free < lowest + self.growth:
                continue
            try:
                await anyio.to_thread.run_sync(self.trim)
            except Exception as exc:  # never expected; the server runs on untrimmed
                logger.warning("could not trim the heap (%s)", type(exc).__name__)
            lowest, used = free, time.process_time()  # the trim's own time is not load
