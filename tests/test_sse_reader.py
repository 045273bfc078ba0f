"""The upstream SSE reader splits lines as the SSE specification does, however chunks fall."""
from __future__ import annotations

import time
from typing import AsyncIterator

import pytest

from realtime_llm.providers.sse_reader import SSEParser, sse_data

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _chunks(text: str, size: int) -> AsyncIterator[str]:
    for i in range(0, len(text), size):
        yield text[i:i + size]


STREAM = (
    ": comment\r\n"
    "event: ignored\r\n"
    "data: {\"a\":\r\n"
    "data: 1}\r\n"
    "\r\n"
    "id: 7\n"
    "data:no-space\n"
    "\n"
    "retry: 100\r"
    "data: line\u2028sep \u0085 nel\r"
    "\r"
    "data: [DONE]\n"
    "\n"
    "data: tail-without-blank-line"
)
EXPECTED = ['{"a":\n1}', "no-space", "line\u2028sep \u0085 nel", "[DONE]", "tail-without-blank-line"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
async def test_events_whatever_the_chunking(size: int) -> None:
    """CRLF, LF and CR all end lines (even split across chunks); U+2028 and U+0085 do not."""
    assert [data async for data in sse_data(_chunks(STREAM, size))] == EXPECTED


async def test_event_without_data_dispatches_nothing() -> None:
    assert [d async for d in sse_data(_chunks("event: x\n\n: c\n\nid: 1\n\n", 4))] == []


def test_a_long_line_in_tiny_chunks_is_joined_once_and_what_is_held_is_counted() -> None:
    """A line under way is kept as its pieces, not copied anew with each one: 400,000
    one-character chunks take well under a second (copied each time, they were hundreds
    of gigabytes of copying). pending() counts the event under way, an empty data line
    included (each holds a list entry), so that a bound on it cannot be slipped past."""
    parser = SSEParser()
    began = time.process_time()
    assert parser.feed("data: ") == []
    for _ in range(400_000):
        assert parser.feed("x") == []
    assert parser.pending() == 400_006
    assert parser.feed("\n") == [] and parser.pending() == 400_001
    assert parser.feed("\n") == ["x" * 400_000] and parser.pending() == 0
    assert time.process_time() - began < 10
    assert parser.feed("data:\n" * 1000) == [] and parser.pending() == 1000
    assert parser.feed("data: a\r") == [] and parser.feed("\nda") == [] and parser.pending() == 1004
    assert parser.feed("ta: b\n\n") == ["\n" * 1000 + "a\nb"] and parser.pending() == 0
