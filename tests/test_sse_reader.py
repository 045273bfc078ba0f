"""The upstream SSE reader splits lines as the SSE specification does, however chunks fall."""
from __future__ import annotations

from typing import AsyncIterator

import pytest

from realtime_llm.providers.sse_reader import sse_data

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
