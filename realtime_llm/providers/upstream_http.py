"""The upstream client's connection: HTTP/1.1 on asyncio, parsed by httptools (llhttp, in
C, the parser uvicorn serves with); upstream_pool.py keeps them.

It replaced aiohttp's client by measurement: per token, aiohttp's protocol, parser
callbacks and StreamReader were about ten Python calls between the socket and the text;
here the body callback cuts the events itself (SSEParser) and the reader waits only when
none is at hand. Both servers under bench.peers' load at once, CPU per token 0.85×.

A response is read as an event stream (status 200) or as a refusal's body, and no more:
- The body is asked for uncompressed (Accept-Encoding: identity); a compressed answer is
  an error, not a guess.
- Bounds: the response's head 64 KiB; one event 8 MiB; events not yet taken 64 KiB, past
  which the socket is not read until they are; a refusal's body 4 KiB. Interim (1xx)
  responses are skipped; bytes past the response's end make the connection unusable.
"""
from __future__ import annotations

import asyncio
import codecs

import httptools

from realtime_llm.providers.sse_reader import SSEParser

MAX_HEAD = 65_536  # bytes of a response's status line and headers
MAX_HELD = 65_536  # bytes of whole events not yet taken before reading pauses
MAX_EVENT = 8 * 1024 * 1024  # characters of one event under way (a whole answer in one chunk fits)
MAX_ERROR_BODY = 4096  # bytes of a refusal's body kept (its message is in the first few hundred)


class UpstreamHTTPError(Exception):
    """The exchange with the upstream failed (the provider words it for the user)."""


class ConnectFailed(UpstreamHTTPError):
    """The upstream could not be reached: refused, unknown host, TLS refused."""


class ConnectTimedOut(ConnectFailed):
    """No connection, pooled or new, within the connect timeout."""


class ConnectionBroken(UpstreamHTTPError):
    """The connection closed, or the upstream sent what is not HTTP, before the response's end."""


def header_safe(value: str) -> bool:
    """Whether `value` can go in a header as it is: printable ASCII (a key holding a line
    break would add headers of its own; one outside ASCII has no agreed encoding)."""
    return value.isascii() and value.isprintable()


class Exchange(asyncio.Protocol):
    """One connection, and the response under way on it."""

    def __init__(self, open_exchanges: "set[Exchange]") -> None:
        self._loop = asyncio.get_running_loop()
        self._open = open_exchanges  # the pool's: this one is in it while its connection is
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.active = False  # a request was sent and its response has not been given up
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._silence = 0.0
        self._heard = 0.0
        self._batch: asyncio.TimerHandle | None = None  # the wake for events held, while they are (hold())
        self._paused = False
        self.begin()

    def begin(self) -> None:
        """Ready for the next response."""
        if self._paused and self.transport is not None:  # given up unread
            self.transport.resume_reading()
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.head_done = self.complete = self._interim = False
        self._spoiled = False  # bytes came past the response's end: it stands, the connection does not
        self.error: Exception | None = None
        self.keep_alive = False
        self._unparsed = 0  # bytes come since the last step (the head's end, body, the end): head, trailers
        self._header_bytes = 0  # the headers' own, as parsed
        self._framed = False  # Content-Length or chunked: not ended by the connection's close
        self._compressed = False  # a refusal's body
        self._events: list[str] = []
        self._held = 0
        self._paused = False
        self._hold_until = float("-inf")  # hold()
        self._cancel_batch()
        self.body = bytearray()  # an error's body (status other than 200)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._sse = SSEParser()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._open.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete or self._spoiled:  # nothing was asked: the connection is done for
            self._spoil()
            return
        self._heard = self._loop.time()
        self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:  # past the response's end: it stands
                self._spoil()
            else:
                self._fail(ConnectionBroken(f"the upstream's response is not valid HTTP ({type(exc).__name__})"))
            return
        if self._spoiled:
            self._spoil()
        elif self.error is not None:  # found by a callback (a compressed body, an event too large)
            self._fail(self.error)
        elif self._unparsed > MAX_HEAD:  # a head, or trailers, that go on and on
            self._fail(ConnectionBroken("the upstream's response headers are too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._open.discard(self)
        if self.head_done and not self.complete and not self._framed and self.error is None and exc is None:
            self.on_message_complete()  # a body without a length ends with its connection (closed, not reset)
        elif not self.complete and self.error is None:
            self.error = ConnectionBroken("the upstream closed the connection")
        self._wake()
        # Nothing is read or written any more: let go of what refers back to this object
        # (the transport, the parser's callbacks), so that it goes when the pool and the
        # reader drop it, not at the collector's next pass (16 objects a connection).
        self.transport = None
        del self._parser

    # httptools' callbacks

    def on_message_begin(self) -> None:
        if self.head_done:  # a second response: nothing asked for it (the callbacks ignore it)
            self._spoiled = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._spoiled:
            return
        self._header_bytes += len(name) + len(value) + 4  # (a head read whole is counted here)
        if self._header_bytes > MAX_HEAD and self.error is None:
            self.error = ConnectionBroken("the upstream's response headers are too large")
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity") and self.error is None:
            if self._parser.get_status_code() == 200:
                self.error = ConnectionBroken("the upstream compressed its answer, which was asked for uncompressed")
            else:  # a refusal is still one: its body, unreadable, is not kept
                self._compressed = True

    def on_headers_complete(self) -> None:
        if self._spoiled:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints): the answer follows
            self._interim, self._header_bytes, self._framed, self._compressed = True, 0, False, False
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self.head_done, self._unparsed = True, 0
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.error is not None or self._spoiled:
            return
        self._unparsed = 0
        if self.status != 200:
            if not self._compressed:
                self.body += body[:MAX_ERROR_BODY - len(self.body)]
            self._wake()
            return
        events = self._sse.feed(self._decoder.decode(body))
        if events:
            self._events += events
            self._held += sum(map(len, events)) + len(events)  # (an empty one holds a list entry)
            if self._held > MAX_HELD and not self._paused and self.transport is not None:
                self._paused = True  # until the reader takes them (events())
                self.transport.pause_reading()
            self._events_came()
        if self._sse.pending() > MAX_EVENT:
            self.error = ConnectionBroken(f"the upstream sent an event of more than {MAX_EVENT // 2**20} MiB")

    def on_message_complete(self) -> None:
        if self._spoiled:
            return
        if self._interim:  # (its bytes stay counted: a run of interim responses is bounded too)
            self._interim = False
            return
        self._unparsed = 0
        if self.status == 200:
            self._events += self._sse.feed(self._decoder.decode(b"", final=True)) + self._sse.end()
        self.complete = True
        self._wake()

    # the reader's side

    async def head(self) -> int:
        """The response's status, once its headers have come."""
        while not self.head_done:
            await self._wait()
        if self.error is not None:
            raise self.error
        return self.status

    async def events(self) -> list[str] | None:
        """The `data` of the events come since the last call, waiting for one (and, within
        a hold(), for its end); None at the body's end. Then raises ConnectionBroken, or
        TimeoutError after `watch`'s silence."""
        while not self._events:
            if self.complete:
                return None
            await self._wait()
        events, self._events, self._held = self._events, [], 0
        self._heard = self._loop.time()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return events

    async def ended(self) -> None:
        """Wait for the body's end (what follows [DONE])."""
        while not self.complete:
            self._events, self._held = [], 0
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            await self._wait()

    async def error_body(self) -> bytes:
        """The start of a refusal's body (MAX_ERROR_BODY bytes), or all of it."""
        while not self.complete and len(self.body) < MAX_ERROR_BODY:
            await self._wait()
        return bytes(self.body)

    def watch(self, silence: float) -> None:
        """From now on, TimeoutError once `silence` seconds pass with no byte come and none
        taken: one timer per `silence`, not a timeout around every read."""
        self._silence, self._heard = silence, self._loop.time()
        self._watchdog = self._loop.call_at(self._heard + silence, self._check_silence)

    def _check_silence(self) -> None:
        if self.complete:  # all come: what is left is the reader's to take
            self._watchdog = None
        elif self._loop.time() - self._heard >= self._silence:
            self._watchdog = None
            self._fail(TimeoutError("the upstream went silent"))
        else:
            self._watchdog = self._loop.call_at(self._heard + self._silence, self._check_silence)

    def hold(self, window: float) -> None:
        """Events that come within `window` seconds from now wake the reader when that
        window ends, together, not each at once; the reader calls it once it has taken
        pieces of the answer (openai._deltas), so the first piece, and one after a quiet
        spell, still come at once. A model's tokens come a few ms apart, and a wake of the
        reader's task for each was a task step a token (relay.UpstreamReader batches them
        for the same window anyway). The body's end, a failure and a pause of reading (too
        much held) wake it at once."""
        self._hold_until = self._loop.time() + window

    def done(self) -> None:
        """The response is given up: no more reading, the watchdog stops."""
        self.active = False
        self._cancel_batch()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and not self.lost and not self._spoiled

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _events_came(self) -> None:
        """Wake a waiting reader for the events come, at once or when the hold() ends."""
        if self._waiter is None or self._waiter.done():  # it comes by itself
            return
        if self._paused or self._hold_until <= self._loop.time():
            self._wake()
        elif self._batch is None:
            self._batch = self._loop.call_at(self._hold_until, self._wake)

    def _wake(self) -> None:
        self._cancel_batch()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _cancel_batch(self) -> None:
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None

    def _spoil(self) -> None:
        """Bytes nobody asked for: the response under way, if whole, stands; the connection
        is closed (and an idle one is so no more)."""
        self._spoiled = True
        if not self.complete and self.error is None:
            self.error = ConnectionBroken("the upstream sent data outside a response")
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()
        self._wake()
