"""The delta coalescer alone: a quiet spell's first delta goes out at once, a burst goes
out as one batch, nothing is lost or reordered, an upstream failure comes after its text."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from realtime_llm.batching import coalesce

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def burst(*deltas: str, fail: Exception | None = None) -> AsyncIterator[str]:
    for delta in deltas:
        yield delta
    if fail is not None:
        raise fail


async def test_a_burst_is_one_batch_after_the_first_delta() -> None:
    batches = [b async for b in coalesce(burst("a", "b", "c", "d"), window=10.0)]
    assert batches == ["a", "bcd"]  # the first at once; the rest when the stream ends


async def test_no_window_sends_every_delta_alone() -> None:
    async def spaced() -> AsyncIterator[str]:
        for delta in "xyz":
            await asyncio.sleep(0.01)
            yield delta

    assert [b async for b in coalesce(spaced(), window=0.0)] == ["x", "y", "z"]


async def test_a_failure_comes_after_the_text_before_it() -> None:
    seen: list[str] = []
    with pytest.raises(ConnectionError):
        async for batch in coalesce(burst("a", "b", "", "c", fail=ConnectionError("cut")), window=10.0):
            seen.append(batch)
    assert seen == ["a", "bc"]


async def test_a_consumer_that_stops_early_leaves_no_reader_running() -> None:
    async def endless() -> AsyncIterator[str]:
        while True:
            await asyncio.sleep(0.001)
            yield "t"

    batches = coalesce(endless(), window=0.0)
    assert await anext(batches) == "t"
    await batches.aclose()
    await asyncio.sleep(0.05)
    assert [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_pump"] == []  # type: ignore[union-attr]
