"""The delta coalescer and the upstream reader alone: a quiet spell's first delta goes out
at once, a burst goes out as one batch, nothing is lost or reordered, a failure or a stop
comes after the text before it, and a stop is seen while the upstream is silent."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import pytest

from realtime_llm.batching import END, STOPPED, Item, Stopped, coalesce
from realtime_llm.providers import ChatRequest, Completion, Provider, UpstreamError
from realtime_llm.relay import UpstreamReader

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def queued(*items: Item) -> asyncio.Queue[Item]:
    queue: asyncio.Queue[Item] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    return queue


async def test_a_burst_is_one_batch_after_the_first_delta() -> None:
    batches = [b async for b in coalesce(queued("a", "b", "c", "d", END), window=10.0)]
    assert batches == ["a", "bcd"]  # the first at once; the rest when the stream ends


async def test_no_window_sends_every_delta_alone() -> None:
    queue: asyncio.Queue[Item] = asyncio.Queue()

    async def spaced() -> None:
        for delta in "xyz":
            await asyncio.sleep(0.01)
            queue.put_nowait(delta)
        queue.put_nowait(END)

    feeder = asyncio.create_task(spaced())
    assert [b async for b in coalesce(queue, window=0.0)] == ["x", "y", "z"]
    await feeder


async def test_the_window_closes_on_time_while_the_upstream_is_silent() -> None:
    queue = queued("a", "b")
    batches = coalesce(queue, window=0.05)
    assert await anext(batches) == "a"
    async with asyncio.timeout(1):
        assert await anext(batches) == "b"  # nothing more came: the window's end sent it


async def test_a_steady_stream_goes_out_a_window_at_a_time_and_whole() -> None:
    """Deltas 5 ms apart under a 30 ms window: batches of several, none lost or reordered,
    and a window's timer never flushes the next batch early (it would make many small ones)."""
    queue: asyncio.Queue[Item] = asyncio.Queue()
    sent = [f"t{i} " for i in range(40)]

    async def steady() -> None:
        for delta in sent:
            queue.put_nowait(delta)
            await asyncio.sleep(0.005)
        queue.put_nowait(END)

    feeder = asyncio.create_task(steady())
    batches = [b async for b in coalesce(queue, window=0.03)]
    await feeder
    assert "".join(batches) == "".join(sent)
    assert batches[0] == "t0 "  # the first at once
    assert 3 <= len(batches) <= 15, batches  # about 200 ms in windows of 30 ms, not 40 alone


async def test_a_failure_comes_after_the_text_before_it() -> None:
    seen: list[str] = []
    with pytest.raises(ConnectionError):
        async for batch in coalesce(queued("a", "b", "", "c", ConnectionError("cut")), window=10.0):
            seen.append(batch)
    assert seen == ["a", "bc"]


async def test_a_stop_comes_after_the_text_before_it_and_nothing_after() -> None:
    seen: list[str] = []
    with pytest.raises(Stopped):
        async for batch in coalesce(queued("a", "b", "c", STOPPED, "late", END), window=10.0):
            seen.append(batch)
    assert seen == ["a", "bc"]


class SilentProvider(Provider):
    """Takes the request, sends one delta, then says nothing until it is closed."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.closed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[Completion]:
        if not self.accept:
            await asyncio.sleep(3600)  # an upstream that never answers the request
        async def deltas(_: Completion) -> AsyncIterator[str]:
            yield "first"
            await asyncio.sleep(3600)
            yield "never"
        try:
            yield Completion(deltas)
        finally:
            self.closed.set()


async def test_a_stop_reaches_a_relay_waiting_on_a_silent_upstream_and_closes_it() -> None:
    provider = SilentProvider()
    async with UpstreamReader(provider, ChatRequest("m", ())) as reader:
        assert await reader.accepted()
        batches = coalesce(reader.queue, window=0.0)
        assert await anext(batches) == "first"
        asyncio.get_running_loop().call_later(0.05, reader.stop)
        with pytest.raises(Stopped):
            async with asyncio.timeout(2):
                await anext(batches)
    assert provider.closed.is_set()  # leaving the reader closed the upstream request
    assert [t for t in asyncio.all_tasks() if t.get_name() == "upstream-reader"] == []


async def test_a_stop_before_the_upstream_accepts_is_not_an_acceptance() -> None:
    async with UpstreamReader(SilentProvider(accept=False), ChatRequest("m", ())) as reader:
        asyncio.get_running_loop().call_later(0.05, reader.stop)
        async with asyncio.timeout(2):
            assert await reader.accepted() is False


async def test_a_refusal_is_raised_by_accepted() -> None:
    class Refusing(Provider):
        @contextlib.asynccontextmanager
        async def stream(self, request: ChatRequest) -> AsyncIterator[Completion]:
            raise UpstreamError("no")
            yield  # pragma: no cover

    async with UpstreamReader(Refusing(), ChatRequest("m", ())) as reader:
        with pytest.raises(UpstreamError):
            await reader.accepted()


async def test_thinking_and_answer_are_batched_apart_and_the_turn_goes_out_at_once() -> None:
    from realtime_llm.providers import Thought

    queue = queued(Thought("a"), Thought("b"), Thought("c"), "x", "y", Thought("late"), END)
    batches = [b async for b in coalesce(queue, window=10.0)]
    assert batches == ["a", "bc", "x", "y", "late"]
    assert [isinstance(b, Thought) for b in batches] == [True, True, False, False, True]
