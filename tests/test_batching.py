"""The delta coalescer and the upstream reader alone: a quiet spell's first delta goes out
at once, a burst goes out as one batch, nothing is lost or reordered, a failure or a stop
comes after the text before it, and a stop is seen while the upstream is silent."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import pytest

from realtime_llm.batching import END, STOPPED, Inbox, Item, Stopped, coalesce
from realtime_llm.providers import ChatRequest, Completion, Provider, Thought, UpstreamError
from realtime_llm.relay import UpstreamReader

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def put(inbox: Inbox, *items: Item) -> Inbox:
    for item in items:
        inbox.put_nowait(item)
    return inbox


async def soon(batches: AsyncIterator[str]) -> str:
    """The next batch, which must come well before any window of these tests ends."""
    async with asyncio.timeout(1):
        return await anext(batches)


async def test_the_first_delta_goes_at_once_and_a_burst_after_it_is_one_batch() -> None:
    inbox = Inbox(window=10.0)
    batches = coalesce(put(inbox, "a"))
    assert await soon(batches) == "a"  # a quiet spell's first delta: no window waited for
    put(inbox, "b", "c", "d")
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # held: the window since "a" has not ended
    put(inbox, END)  # the end is due at once, and what is held goes before it
    async with asyncio.timeout(1):
        assert await waiting == "bcd"
    assert [b async for b in batches] == []


async def test_what_came_together_before_a_take_is_one_batch() -> None:
    assert [b async for b in coalesce(put(Inbox(window=10.0), "a", "b", "", "c", END))] == ["abc"]


async def test_no_window_sends_every_delta_alone() -> None:
    assert [b async for b in coalesce(put(Inbox(window=0.0), "a", "b", "", "c", END))] == ["a", "b", "c"]
    inbox = Inbox(window=0.0)

    async def spaced() -> None:
        for delta in "xyz":
            await asyncio.sleep(0.01)
            inbox.put_nowait(delta)
        inbox.put_nowait(END)

    feeder = asyncio.create_task(spaced())
    assert [b async for b in coalesce(inbox)] == ["x", "y", "z"]
    await feeder


async def test_the_window_closes_on_time_while_the_upstream_is_silent() -> None:
    inbox = Inbox(window=0.05)
    batches = coalesce(put(inbox, "a"))
    assert await soon(batches) == "a"
    put(inbox, "b")
    assert await soon(batches) == "b"  # nothing more came: the window's end sent it


async def test_a_steady_stream_goes_out_a_window_at_a_time_and_whole() -> None:
    """Deltas 5 ms apart under a 30 ms window: batches of several, none lost or reordered,
    and a window's timer never flushes the next batch early (it would make many small ones)."""
    inbox = Inbox(window=0.03)
    sent = [f"t{i} " for i in range(40)]

    async def steady() -> None:
        for delta in sent:
            inbox.put_nowait(delta)
            await asyncio.sleep(0.005)
        inbox.put_nowait(END)

    feeder = asyncio.create_task(steady())
    batches = [b async for b in coalesce(inbox)]
    await feeder
    assert "".join(batches) == "".join(sent)
    assert batches[0] == "t0 "  # the first at once
    assert 3 <= len(batches) <= 15, batches  # about 200 ms in windows of 30 ms, not 40 alone


async def test_a_failure_comes_after_the_text_before_it() -> None:
    inbox = Inbox(window=10.0)
    batches = coalesce(put(inbox, "a"))
    assert await soon(batches) == "a"
    put(inbox, "b", "", "c", ConnectionError("cut"))
    assert await soon(batches) == "bc"
    with pytest.raises(ConnectionError):
        await soon(batches)


async def test_a_stop_comes_after_the_text_before_it_and_nothing_after() -> None:
    seen: list[str] = []
    with pytest.raises(Stopped):
        async for batch in coalesce(put(Inbox(window=10.0), "a", "b", "c", STOPPED, "late", END)):
            seen.append(batch)
    assert seen == ["abc"]


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
        batches = coalesce(reader.inbox)
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
    batches = [b async for b in coalesce(put(Inbox(window=10.0), Thought("a"), Thought("b"), "x", "y",
                                             Thought("late"), END))]
    assert batches == ["ab", "xy", "late"]
    assert [isinstance(b, Thought) for b in batches] == [True, False, True]
    inbox = Inbox(window=10.0)
    batches = coalesce(put(inbox, Thought("a")))
    assert await soon(batches) == "a"
    put(inbox, Thought("b"))  # held: within the window
    put(inbox, "x")  # the model turned: what is held goes out, and the answer's first delta, at once
    assert (await soon(batches), await soon(batches)) == ("b", "x")
    put(inbox, "y", END)
    assert [b async for b in batches] == ["y"]
