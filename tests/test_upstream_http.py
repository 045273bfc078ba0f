"""The upstream client's own duties (providers/upstream_http.py), against raw servers on
loopback: TLS, what goes in the request's head, the bounds on what comes back, and which
connections are kept."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gc
import ssl
import time
import weakref
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from realtime_llm.config import ProviderSettings
from realtime_llm.providers import ChatMessage, ChatRequest, UpstreamError, upstream_http
from realtime_llm.providers.openai import OpenAIProvider
from realtime_llm.providers.upstream_http import MAX_HELD
from tests.fake_upstream import read_request

pytestmark = pytest.mark.anyio

DONE = b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(DONE), DONE)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Upstream:
    """Answers every request with `answer`, in `pieces` writes 0.2 s apart; keeps each
    request's head, counts connections. An answer without a Content-Length is ended by
    closing the connection, unless `hold`: then it stays open."""

    def __init__(self, answer: bytes, pieces: int = 1, hold: bool = False) -> None:
        self.answer = answer
        self.pieces = pieces
        self.hold = hold
        self.heads: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            while True:
                self.heads.append(await read_request(reader))
                size = -(-len(self.answer) // self.pieces)
                for start in range(0, len(self.answer), size):
                    writer.write(self.answer[start:start + size])
                    await writer.drain()
                    if start + size < len(self.answer):
                        await asyncio.sleep(0.2)
                if self.hold:
                    await asyncio.sleep(10)
                if b"content-length" not in self.answer.lower():
                    break
        writer.close()


@contextlib.asynccontextmanager
async def serving(upstream: Upstream, base: str = "http://127.0.0.1:{port}/v1", tls: ssl.SSLContext | None = None,
                  api_key: str = "") -> AsyncIterator[OpenAIProvider]:
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    provider = OpenAIProvider(ProviderSettings(name="raw", kind="openai", base_url=base.format(port=port),
                                               api_key=api_key, connect_timeout=2.0, read_timeout=2.0))
    await provider.start()
    try:
        async with asyncio.timeout(30):
            yield provider
    finally:
        await provider.close()
        server.close()


async def answer(provider: OpenAIProvider, api_key: str = "") -> str:
    async with provider.stream(ChatRequest("m", (ChatMessage("user", "hello"),), api_key=api_key)) as completion:
        return "".join([piece async for piece in completion])


def certificate(tmp_path: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for `host` only, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{host}.pem", tmp_path / f"{host}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_https_with_a_trusted_certificate_and_not_with_an_untrusted_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = certificate(tmp_path, "localhost")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    upstream = Upstream(OK)
    async with serving(upstream, "https://localhost:{port}/v1", tls) as untrusting:  # the system's CAs only
        with pytest.raises(UpstreamError, match="could not reach the model provider 'raw'"):
            await answer(untrusting)
    other, other_key = certificate(tmp_path, "other.example")  # trusted, but for another name
    elsewhere = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    elsewhere.load_cert_chain(other, other_key)
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    async with serving(upstream, "https://localhost:{port}/v1", elsewhere) as misnamed:
        with pytest.raises(UpstreamError, match="could not reach the model provider 'raw'"):
            await answer(misnamed)
    assert upstream.heads == []
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read when the provider starts
    async with serving(upstream, "https://localhost:{port}/v1", tls) as provider:
        assert await answer(provider) == "hi" and await answer(provider) == "hi"
    assert len(upstream.heads) == 2 and upstream.heads[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")


async def test_an_api_key_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    upstream = Upstream(OK)
    async with serving(upstream) as provider:
        with pytest.raises(UpstreamError, match="cannot be sent"):
            await answer(provider, api_key="sk-x\r\nX-Injected: 1")
        assert await answer(provider, api_key="sk-fine") == "hi"
    assert len(upstream.heads) == 1 and b"X-Injected" not in upstream.heads[0]
    assert b"\r\nAuthorization: Bearer sk-fine\r\n" in upstream.heads[0]


async def test_credentials_in_the_base_url_go_as_basic_auth_and_never_in_the_host() -> None:
    upstream = Upstream(OK)
    async with serving(upstream, "http://us%40er:p%3Ass@127.0.0.1:{port}/v1") as provider:
        assert await answer(provider) == "hi"
        assert await answer(provider, api_key="sk-key") == "hi"  # a key goes instead
    basic = base64.b64encode(b"us@er:p:ss")
    assert b"\r\nAuthorization: Basic " + basic + b"\r\n" in upstream.heads[0]
    assert b"\r\nHost: 127.0.0.1:" in upstream.heads[0] and b"us%40er" not in upstream.heads[0]
    assert b"\r\nAuthorization: Bearer sk-key\r\n" in upstream.heads[1] and basic not in upstream.heads[1]


@pytest.mark.parametrize("answer_bytes", [
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n" + DONE,  # headers past 64 KiB, read whole
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(DONE), DONE),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk size\r\n",
    b"this is not HTTP at all\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nX-Trailer: %s" % (
        len(DONE) - 16, DONE[:-16], b"a" * 100_000),  # an answer without [DONE], then trailers on and on
    OK + b"HTTP/1.1 200 OK\r\nContent-Le",  # the answer, then bytes past it
    OK + b"what is this\r\n",
], ids=["big-head", "gzip", "bad-chunk", "not-http", "endless-trailer", "past-the-end", "junk-past-the-end"])
async def test_what_is_not_one_well_formed_uncompressed_answer_is_an_error_at_once(answer_bytes: bytes) -> None:
    """The upstream keeps the connection open: each is found in what came, not by a close
    or the read timeout (2 s). (The trailers come in 4 writes 0.2 s apart: one read of
    them is bounded by the read's size; what the bound stops is their going on.) An answer
    followed by bytes past its end is still whole, but its connection is not kept."""
    upstream = Upstream(answer_bytes, pieces=4 if b"X-Trailer" in answer_bytes else 1, hold=True)
    async with serving(upstream) as provider:
        began = time.monotonic()
        if answer_bytes.startswith(OK):
            assert await answer(provider) == "hi" and await answer(provider) == "hi"
            assert upstream.connections == 2
        else:
            with pytest.raises(UpstreamError, match="closed in the middle"):
                await answer(provider)
        assert time.monotonic() - began < 1.9  # (the read timeout: 2 s)
    assert b"\r\nAccept-Encoding: identity\r\n" in upstream.heads[0]


async def test_interim_responses_are_skipped() -> None:
    upstream = Upstream(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
                        b"HTTP/1.1 100 Continue\r\n\r\n" + OK, pieces=2)
    async with serving(upstream) as provider:
        assert await answer(provider) == "hi" and await answer(provider) == "hi"
    assert upstream.connections == 1


async def test_one_event_larger_than_the_reading_bound_comes_whole_and_one_past_8_mib_is_an_error() -> None:
    for size, expected in ((300_000, "x" * 300_000), (9 * 2**20, None)):
        event = b'data: {"choices":[{"delta":{"content":"%s"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n' % (
            b"x" * size)
        upstream = Upstream(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(event), event), pieces=3)
        async with serving(upstream) as provider:
            if expected is None:
                with pytest.raises(UpstreamError, match="closed in the middle"):
                    await answer(provider)
            else:
                assert await answer(provider) == expected


async def test_a_reader_that_falls_behind_stops_the_socket_being_read_and_then_gets_everything() -> None:
    event = b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % (b"x" * 1000)
    body = event * 8000 + b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    upstream = Upstream(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    async with serving(upstream) as provider:
        async with provider.stream(ChatRequest("m", (ChatMessage("user", "hello"),))) as completion:
            pieces = aiter(completion)
            got = len(await anext(pieces))
            await asyncio.sleep(1.0)  # 8 MB sent at once; the reader takes nothing
            assert provider._pool is not None
            (exchange,) = provider._pool._open
            assert exchange._paused and exchange._held <= MAX_HELD + 262_144  # one read past the bound at most
            async for piece in pieces:
                got += len(piece)
        assert got == 8000 * 1000


async def test_an_answer_given_up_while_its_reading_is_paused_leaves_a_connection_that_works(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """All of it came and reading paused (the events not taken); the reader stops there
    (a stop, a client gone): the connection goes back to the pool reading again. (The bound
    is lowered so that the last read, one of 20 KB, both passes it and ends the answer.)"""
    monkeypatch.setattr(upstream_http, "MAX_HELD", 10_000)
    event = b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % (b"x" * 1000)
    body = event * 40 + b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    upstream = Upstream(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), pieces=2)
    async with serving(upstream) as provider:
        async with provider.stream(ChatRequest("m", (ChatMessage("user", "hello"),))) as completion:
            pieces = aiter(completion)
            await anext(pieces)
            await asyncio.sleep(0.5)  # the second half comes: more than the bound, not taken
            assert provider._pool is not None
            (exchange,) = provider._pool._open
            assert exchange._paused and exchange.complete
            await pieces.aclose()  # type: ignore[attr-defined]
        upstream.answer, upstream.pieces = OK, 1
        assert await answer(provider) == "hi"
    assert upstream.connections == 1


async def test_connections_are_kept_between_answers_and_one_the_upstream_closed_is_replaced() -> None:
    upstream = Upstream(OK)
    async with serving(upstream) as provider:
        for _ in range(3):
            assert await answer(provider) == "hi"
        assert upstream.connections == 1
        upstream.writers[0].close()  # the upstream ends the idle connection
        await asyncio.sleep(0.2)
        assert await answer(provider) == "hi"
        assert upstream.connections == 2


async def test_a_closed_connection_is_freed_without_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exchange whose connection ended goes once the pool and the reader let it go: it
    let go of its transport and its parser, which both refer back to it (a cycle only the
    collector would have found, for every connection an upstream closes)."""
    made: list[weakref.ref[upstream_http.Exchange]] = []
    real_init = upstream_http.Exchange.__init__

    def init(self: upstream_http.Exchange, *args: Any) -> None:
        real_init(self, *args)
        made.append(weakref.ref(self))

    monkeypatch.setattr(upstream_http.Exchange, "__init__", init)
    upstream = Upstream(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + DONE)  # ended by a close
    async with serving(upstream) as provider:
        gc.collect()
        gc.disable()
        try:
            assert await answer(provider) == "hi" and await answer(provider) == "hi"
            await asyncio.sleep(0.1)  # (the second connection's end)
            assert len(made) == 2 and [ref() for ref in made] == [None, None]
        finally:
            gc.enable()


async def test_a_body_ended_by_closing_the_connection_is_read_whole_and_the_connection_not_kept() -> None:
    upstream = Upstream(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + DONE)
    async with serving(upstream) as provider:
        assert await answer(provider) == "hi" and await answer(provider) == "hi"
    assert upstream.connections == 2


def sse_event(delta: str) -> bytes:
    return b'data: {"choices":[{"delta":%s}]}\n\n' % delta.encode()


async def timed_answer(parts: list[tuple[float, bytes]], window: float) -> tuple[dict[str, float], dict[bytes, float]]:
    """An upstream that sends each part at its time (s after the head), read with a batch
    window: when each piece arrived and when each part was sent, on the same clock."""
    sent: dict[bytes, float] = {}
    body_length = sum(len(part) for _, part in parts)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body_length)
            began = time.monotonic()
            for at, part in parts:
                await asyncio.sleep(began + at - time.monotonic())
                sent[part] = time.monotonic()
                writer.write(part)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = OpenAIProvider(ProviderSettings(name="raw", kind="openai", base_url=f"http://127.0.0.1:{port}/v1",
                                               connect_timeout=2.0, read_timeout=5.0))
    await provider.start()
    arrived: dict[str, float] = {}
    try:
        request = ChatRequest("m", (ChatMessage("user", "hello"),), batch_window=window)
        async with asyncio.timeout(10), provider.stream(request) as completion:
            async for piece in completion:
                arrived[piece] = time.monotonic()
    finally:
        await provider.close()
        server.close()
        await server.wait_closed()
    return arrived, sent


@pytest.mark.parametrize("window", [0.0, 0.5])
async def test_with_a_batch_window_events_close_together_reach_the_reader_together(window: float) -> None:
    """Exchange.hold: with a window, the first piece comes at once (after a chunk with
    none, as a role's is), and one after a quiet spell; one that follows pieces taken
    within the window waits for the window's end; the body's end is not held. Without a
    window, each comes as it arrives. (Latencies: a piece's arrival less its part's send,
    on one clock; at once is a few ms, held is about 0.4 s here.)"""
    role, a, b, c, d = (sse_event(delta) for delta in (
        '{"role":"assistant"}', '{"content":"a"}', '{"content":"b"}', '{"content":"c"}', '{"content":"d"}'))
    end = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    arrived, sent = await timed_answer([(0.0, role), (0.1, a), (0.2, b), (2.0, c), (2.05, d), (2.1, end)], window)
    assert list(arrived) == ["a", "b", "c", "d"]
    assert arrived["a"] - sent[a] < 0.25 and arrived["c"] - sent[c] < 0.25  # at once
    if window:
        assert arrived["b"] - sent[b] >= 0.3  # held to 0.5 s after a was taken
        assert arrived["d"] - sent[end] < 0.25  # held, but the body's end took it at once (not at 2.5 s)
    else:
        assert arrived["b"] - sent[b] < 0.25 and arrived["d"] - sent[d] < 0.25


async def test_a_burst_past_the_reading_bound_is_not_held_by_the_batch_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading pauses once more than MAX_HELD waits for the reader: the window does not
    hold the reader then, even with its timer already set."""
    monkeypatch.setattr(upstream_http, "MAX_HELD", 2_000)
    first, held = sse_event('{"content":"a"}'), sse_event('{"content":"b"}')
    burst = sse_event('{"content":"%s"}' % ("x" * 3_000))
    end = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    arrived, sent = await timed_answer([(0.0, first), (0.1, held), (0.2, burst), (2.0, end)], 1.0)
    assert arrived["b"] - sent[burst] < 0.25 and arrived["x" * 3_000] - sent[burst] < 0.25  # not at 1 s
