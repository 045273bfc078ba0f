"""A WebSocket watcher as lean as a client can be, for the fan-out benchmarks: what they
time should be the servers' delivery, not a client library's work per frame. (Sampled
with py-spy during bench.fanout, the websockets client spent more CPU per frame than the
server sending it, on the same two cores.)

Each read is stamped when it arrives; the frames in it are cut out by their length, and
a `message` event's token stamps (`<unix time>`, bench.upstream's stamp=1) give one
delay each. Server frames are not masked, so the event's JSON is in the bytes as sent.
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from urllib.parse import urlsplit

from websockets.frames import Frame, Opcode

STAMP = re.compile(rb"<(\d+\.\d+)>")
TEXT, CLOSE, PING = 0x1, 0x8, 0x9


class Watcher(asyncio.Protocol):
    """One socket on a conversation: `ready` when the server's `ready` came, `done` at the
    answer's `full_response` (or an `error`, or the socket's end)."""

    def __init__(self, delays: list[float]) -> None:
        loop = asyncio.get_running_loop()
        self.delays = delays
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None  # set by watch()
        self._buffer = bytearray()
        self._open = False
        self.frames = 0  # text frames received

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(Frame(Opcode.TEXT, text.encode()).serialize(mask=True))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self._buffer += data
        if not self._open:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._buffer.startswith(b"HTTP/1.1 101"):
                self._end(ConnectionError(bytes(self._buffer[:120])))
                return
            del self._buffer[:end + 4]
            self._open = True
        buffer, at = self._buffer, 0
        while len(buffer) - at >= 2:
            opcode, length, head = buffer[at] & 0x0F, buffer[at + 1] & 0x7F, 2
            if length == 126:
                length, head = int.from_bytes(buffer[at + 2:at + 4], "big"), 4
            elif length == 127:
                length, head = int.from_bytes(buffer[at + 2:at + 10], "big"), 10
            if len(buffer) - at < head + length:
                break
            self._frame(opcode, bytes(buffer[at + head:at + head + length]), now)
            at += head + length
        del buffer[:at]

    def _frame(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == PING:
            assert self.transport is not None
            self.transport.write(Frame(Opcode.PONG, payload).serialize(mask=True))
        elif opcode == CLOSE:
            self._end(None)
        elif opcode == TEXT:
            self.frames += 1
            if payload.startswith(b'{"event":"message"'):
                self.delays.extend(now - float(stamp) for stamp in STAMP.findall(payload))
            elif payload.startswith(b'{"event":"ready"') and not self.ready.done():
                self.ready.set_result(None)
            elif payload.startswith((b'{"event":"full_response"', b'{"event":"error"')):
                self._end(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionError("closed"))

    def _end(self, error: Exception | None) -> None:
        for future in (self.ready, self.done):
            if not future.done():
                if error is None and future is self.done:
                    future.set_result(None)
                else:
                    future.set_exception(error or ConnectionError("ended before ready"))
        if self.transport is not None:
            self.transport.close()


async def watch(url: str, path: str, headers: dict[str, str], delays: list[float]) -> Watcher:
    """A Watcher connected to `url` (http://host:port) at `path`, its handshake sent."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    loop = asyncio.get_running_loop()
    transport, watcher = await loop.create_connection(lambda: Watcher(delays), parts.hostname, parts.port)
    watcher.transport = transport  # (uvloop calls connection_made a moment after this returns)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             *(f"{name}: {value}" for name, value in headers.items())]
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    return watcher
