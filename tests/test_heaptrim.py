"""The heap trimmer with the real C library: freed heap goes back to the system once the
process is quiet, and never while it is busy."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from realtime_llm.heaptrim import HeapTrimmer

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * 4096


def fragmented(total: int) -> tuple[list[bytearray], list[bytearray]]:
    """`total` bytes in blocks the allocator takes from its heap (over Python's 512-byte
    limit, under glibc's mmap threshold); one in twenty to keep, so that the heap's top
    stays in use and nothing goes back by itself."""
    keep: list[bytearray] = []
    junk: list[bytearray] = []
    for i in range(total // 600):
        (keep if i % 20 == 0 else junk).append(bytearray(600))
    return keep, junk


async def wait_for(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_freed_heap_goes_back_once_quiet_never_under_load() -> None:
    trimmer = HeapTrimmer(interval=0.2, growth=8 * MIB)
    assert trimmer.available  # Debian's glibc: the trimmer must run where the server runs
    await trimmer.start()
    try:
        keep, junk = fragmented(64 * MIB)
        del junk  # freed: the allocator holds it
        held = rss()
        busy_until = time.monotonic() + 1.5

        def burn() -> None:
            while time.monotonic() < busy_until:
                pass

        burner = threading.Thread(target=burn)
        burner.start()
        await asyncio.sleep(1.2)  # looks of a busy process: no trim
        assert trimmer.trims == 0
        burner.join()
        assert await wait_for(lambda: trimmer.trims > 0, 5.0)  # quiet: trimmed
        assert rss() < held - 32 * MIB, (held, rss())
        trims = trimmer.trims
        await asyncio.sleep(1.0)  # nothing newly freed: no trim again
        assert trimmer.trims == trims
        del keep
    finally:
        await trimmer.close()
