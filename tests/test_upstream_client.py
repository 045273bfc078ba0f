"""The upstream client against an upstream that misbehaves at the HTTP level, which the
fake upstream (a well-behaved Starlette app) cannot: a raw HTTP server on loopback that
answers each request as the test scripts it, and keeps what it was sent."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from typing import AsyncIterator, Callable

import pytest

from realtime_llm.config import ProviderSettings
from realtime_llm.providers import ChatMessage, ChatRequest, Thought, UpstreamError
from realtime_llm.providers.openai import OpenAIProvider
from tests.fake_upstream import FakeUpstream, read_request

pytestmark = pytest.mark.anyio

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
CHUNK = b'data: {"choices":[{"delta":{"content":"hi "}}]}\n\n'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RawUpstream:
    """Each request's head is kept; `answer(n)` gives the bytes to answer the n-th with, or
    a list of pieces, sent 0.2 s apart."""

    def __init__(self, answer: Callable[[int], bytes | list[bytes]]) -> None:
        self.answer = answer
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                self.heads.append(await read_request(reader))
                answer = self.answer(len(self.heads))
                for piece in [answer] if isinstance(answer, bytes) else answer:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.2)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await asyncio.sleep(1.5)  # holds the connection open past the read timeout, as a stalled upstream would
            writer.close()


@contextlib.asynccontextmanager
async def raw_upstream(answer: Callable[[int], bytes | list[bytes]],
                       host: str = "127.0.0.1") -> AsyncIterator[tuple[RawUpstream, OpenAIProvider]]:
    """A raw upstream on loopback and a provider for it (1 s timeouts), both closed after."""
    upstream = RawUpstream(answer)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = OpenAIProvider(ProviderSettings(name="raw", kind="openai", base_url=f"http://{host}:{port}/v1",
                                               connect_timeout=1.0, read_timeout=1.0))
    await provider.start()
    try:
        yield upstream, provider
    finally:
        await provider.close()
        server.close()


async def read_answer(provider: OpenAIProvider) -> str:
    text = ""
    async with provider.stream(ChatRequest("m", (ChatMessage("user", "hello"),))) as completion:
        async for delta in completion:
            text += delta
    return text


async def test_a_chunk_that_cannot_be_parsed_ends_the_answer_within_the_read_timeout() -> None:
    """A good chunk, then a chunk size that is not hex. (aiohttp's parser, the client
    before ours, failed without telling the body's reader, which waited for good.)"""
    pieces = [HEAD + b"\r\n%x\r\n%s\r\n" % (len(CHUNK), CHUNK), b"zz\r\nbroken\r\n"]
    async with raw_upstream(lambda n: pieces) as (_, provider):
        began = time.monotonic()
        with pytest.raises(UpstreamError, match="timed out|closed"):
            async with asyncio.timeout(10):
                await read_answer(provider)
        assert time.monotonic() - began < 5


async def test_an_answer_cut_anywhere_across_reads_comes_whole_and_the_connection_is_reused() -> None:
    """The body read in one generator (_deltas): an event, a CRLF and a UTF-8 character
    each split across reads 0.2 s apart; [DONE] with no finish_reason before it still
    ends the answer, flushing what the think-tag splitter held; the connection goes back
    to the pool for the next answer."""
    events = ('data: {"choices":[{"delta":{"content":"<think>hé"}}]}\r\n\r\n'
              'data: {"choices":[{"delta":{"content":" café </th"}}]}\n\n'  # "</th": held, maybe a tag
              'data: [DONE]\n\n').encode()
    cuts = sorted((0, 20, events.index("é".encode()) + 1, events.index(b"\r\n") + 1, len(events)))
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in
                    (events[a:b] for a, b in itertools.pairwise(cuts))) + b"0\r\n\r\n"
    pieces = [HEAD + b"\r\n" + body[:30], *(body[i:i + 37] for i in range(30, len(body), 37))]

    async def answer(provider: OpenAIProvider) -> list[str]:
        async with provider.stream(ChatRequest("m", (ChatMessage("user", "hello"),))) as completion:
            return [piece async for piece in completion]

    async with raw_upstream(lambda n: pieces) as (upstream, plain):
        think = OpenAIProvider(dataclasses.replace(plain.settings, think_tags=True))
        await think.start()
        try:
            async with asyncio.timeout(30):
                first, second = await answer(think), await answer(think)
                assert "".join(first) == "hé café </th" and first == second
                assert all(isinstance(piece, Thought) for piece in first)
                assert "".join(await answer(plain)) == "<think>hé café </th"
        finally:
            await think.close()
        assert len(upstream.heads) == 3


async def test_a_redirect_is_a_refusal_and_is_not_followed() -> None:
    redirect = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
    async with raw_upstream(lambda n: redirect) as (upstream, provider):
        with pytest.raises(UpstreamError, match=r"HTTP 307"):
            async with asyncio.timeout(10):
                await read_answer(provider)
        assert len(upstream.heads) == 1 and upstream.heads[0].startswith(b"POST /v1/chat/completions ")


async def test_a_cookie_the_upstream_sets_is_never_sent_back() -> None:
    """One client serves every user: a cookie set in answer to one would go with the next's."""
    body = b"data: " + b'{"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}' + b"\n\ndata: [DONE]\n\n"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nSet-Cookie: sid=first-users; Path=/\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    # (localhost: a cookie jar keeps no cookie of an IP address)
    async with raw_upstream(lambda n: answer, host="localhost") as (upstream, provider):
        async with asyncio.timeout(10):
            assert await read_answer(provider) == "hi"
            assert await read_answer(provider) == "hi"
        assert len(upstream.heads) == 2
        assert all(b"cookie:" not in head.lower() for head in upstream.heads), upstream.heads[1]



async def test_a_pooled_connection_is_not_poisoned_after_a_long_answer_read_slowly() -> None:
    """An answer that ends while its reading is paused (a long one, read slower than it
    comes) goes back to the pool, and the next answer on that connection works. (Under
    aiohttp 3.14.5, the client before ours, draining it re-armed the socket read timeout
    on the idle pooled connection, and the next answer failed at once with 'timed out':
    aio-libs/aiohttp#12953. The fake upstream: uvicorn's chunked writes, one per token, are
    what it takes; one write of the whole answer did not show it.)"""
    upstream = FakeUpstream().start()
    provider = OpenAIProvider(ProviderSettings(name="fake", kind="openai", base_url=upstream.base_url,
                                               connect_timeout=1.0, read_timeout=1.0))
    await provider.start()
    try:
        async with asyncio.timeout(30):
            read = 0
            request = ChatRequest("fake-model", (ChatMessage("user", "#fake tokens=600 size=20000"),))
            async with provider.stream(request) as completion:
                async for text in completion:
                    read += len(text)
                    await asyncio.sleep(0.001)  # slower than loopback delivers
            assert read == 600 * 20_000
            await asyncio.sleep(1.5)  # past the read timeout, idle in the pool
            assert await read_answer(provider) == "t0 t1 t2 t3 t4 "
        assert len({r.client_port for r in upstream.received}) == 1  # the same connection, reused
    finally:
        await provider.close()
        upstream.stop()
