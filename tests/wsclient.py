"""A small synchronous WebSocket client for tests, on the `websockets` library."""
from __future__ import annotations

import os
import socket
import time
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect


class Socket:
    """A conversation socket: send frames, read events, see how it closed."""

    def __init__(self, base_url: str, cid: int | str, headers: dict[str, str] | None = None, query: str = "",
                 max_queue: int | None = 16, sock: socket.socket | None = None) -> None:
        """max_queue=None buffers everything, for a test that reads its events late (the
        default stops reading when 16 wait, so a lagging test would miss server pings).
        `sock`: a connection of the test's own to the server (small buffers, say)."""
        url = base_url.replace("http://", "ws://") + f"/ws/conversations/{cid}" + (f"?{query}" if query else "")
        self._connecting = connect(url, additional_headers=headers or {}, open_timeout=10, sock=sock,
                                   max_size=None, compression=None, close_timeout=2, max_queue=max_queue)
        self.conn: ClientConnection = self._connecting.__enter__()

    def send(self, frame: dict[str, Any] | str | bytes) -> None:
        self.conn.send(frame if isinstance(frame, (str, bytes)) else orjson.dumps(frame).decode())

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return orjson.loads(self.conn.recv(timeout=timeout))  # type: ignore[no-any-return]

    def recv_until(self, event: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Events up to and including the first of type `event`."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            frame = self.recv(timeout=max(0.01, deadline - time.monotonic()))
            seen.append(frame)
            if frame["event"] == event:
                return seen

    def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes; its close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.conn.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            return None
        return None

    def close(self) -> None:
        self._connecting.__exit__(None, None, None)

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def auth_socket(base_url: str, cid: int | str, headers: dict[str, str], **kwargs: Any) -> Socket:
    return Socket(base_url, cid, headers=headers, **kwargs)


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"].split(" ", 1)[1]


def raw_handshake(port: int, cid: int, authorization: str) -> tuple[socket.socket, bytes]:
    """A conversation socket opened by hand (for tests that must see or send frames a
    library would handle unseen): the connection, and what came after the 101's headers."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall((f"GET /ws/conversations/{cid} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 f"Sec-WebSocket-Version: 13\r\nAuthorization: {authorization}\r\n\r\n").encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += raw.recv(4096)
    head, rest = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return raw, rest


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (clients mask theirs), payload under 126 bytes."""
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
