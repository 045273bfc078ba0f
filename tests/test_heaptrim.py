"""The heap trimmer with the real C library: freed heap goes back to the system once the
process is quiet, and never while it is busy.

It runs in a fresh interpreter: "quiet" is the whole process's CPU, and the test
process's own threads (servers and clients of other tests) must not decide it."""
from __future__ import annotations

import subprocess
import sys

SCENARIO = r'''
import asyncio, threading, time
from realtime_llm.heaptrim import HeapTrimmer

MIB = 1024 * 1024


def rss():
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * 4096


def fragmented(total):
    # Blocks the allocator takes from its heap (over Python's 512-byte limit, under
    # glibc's mmap threshold), one in twenty kept: the heap's top stays in use and
    # nothing goes back by itself.
    keep, junk = [], []
    for i in range(total // 600):
        (keep if i % 20 == 0 else junk).append(bytearray(600))
    return keep, junk


async def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def main():
    trimmer = HeapTrimmer(interval=0.2, growth=8 * MIB)
    assert trimmer.available, "Debian's glibc: the trimmer must run where the server runs"
    await trimmer.start()
    try:
        keep, junk = fragmented(64 * MIB)
        del junk  # freed: the allocator holds it
        held = rss()
        busy_until = time.monotonic() + 1.5

        def burn():
            while time.monotonic() < busy_until:
                pass

        burner = threading.Thread(target=burn)
        burner.start()
        await asyncio.sleep(1.2)  # looks of a busy process: no trim
        assert trimmer.trims == 0, "trimmed under load"
        burner.join()
        assert await wait_for(lambda: trimmer.trims > 0, 5.0), "not trimmed once quiet"
        assert rss() < held - 16 * MIB, ("RSS did not fall", held, rss())
        trims = trimmer.trims
        await asyncio.sleep(1.0)  # nothing newly freed: no trim again
        assert trimmer.trims == trims, "trimmed again with nothing newly freed"
        del keep
    finally:
        await trimmer.close()
    print("ok")


asyncio.run(main())
'''


def test_freed_heap_goes_back_once_quiet_never_under_load() -> None:
    done = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
