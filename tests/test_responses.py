"""EventStreamResponse against the ASGI contract as uvicorn keeps it: a Last chunk ends
the response in the same message, the stream's own end still runs to completion although
receive() says http.disconnect once the response is complete, and what it yields after
its Last chunk is dropped and logged, not sent and not raised."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

import pytest

from realtime_llm.responses import EventStreamResponse, Last

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def respond(chunks: AsyncIterator[bytes]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    complete = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await complete.wait()  # as uvicorn: a request without more body waits for the response's end
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            complete.set()

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "GET", "headers": []}
    await EventStreamResponse(chunks)(scope, receive, send)
    return sent


async def test_a_last_chunk_ends_the_response_and_the_stream_still_cleans_up() -> None:
    cleaned: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            yield Last(b"data: 2\n\n")
        finally:
            await asyncio.sleep(0.05)  # leaving a subscription: after the response is complete
            cleaned.append("done")

    sent = await respond(chunks())
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(b"data: 1\n\n", True), (b"data: 2\n\n", False)]
    assert cleaned == ["done"]


async def test_without_a_last_chunk_the_response_ends_on_its_own() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"

    sent = await respond(chunks())
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(b"data: 1\n\n", True), (b"", False)]


async def test_what_comes_after_the_last_chunk_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield Last(b"data: 1\n\n")
        yield b"data: late\n\n"
        raise RuntimeError("leaving failed")

    with caplog.at_level(logging.WARNING, logger="realtime_llm.http"):
        sent = await respond(chunks())
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n"]
    assert "went on after its last chunk" in caplog.text and "failed after its last chunk" in caplog.text
