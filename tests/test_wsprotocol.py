"""WebSocketProtocol.write_event, a fan-out's path to each connection, in every state a
connection passes through: uvicorn's protocol on a real connected socket pair, driven with
real frames by the test as the client. (tests/test_ws.py covers the same path end to end
through the server; here each state is reached on purpose and write_event asked at once.)"""
from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.server import ServerState
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State

from realtime_llm.events import make_event, ws_frame
from realtime_llm.wsprotocol import WebSocketProtocol

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
                        pytest.param(("asyncio", {}), id="asyncio")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return request.param  # type: ignore[no-any-return]  # the server runs on uvloop


async def watch(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


class Peer:
    """The client's end of the socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def recv(self) -> bytes:
        return await self.loop.sock_recv(self.sock, 1 << 20)

    async def read_until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        data = b""
        async with asyncio.timeout(timeout):
            while marker not in data:
                chunk = await self.recv()
                if not chunk:
                    raise ConnectionError(f"closed after {data[:200]!r}")
                data += chunk
        return data


@pytest.fixture
async def opened() -> AsyncIterator[tuple[WebSocketProtocol, Peer]]:
    config = uvicorn.Config(Starlette(routes=[WebSocketRoute("/ws", watch)]), ws=WebSocketProtocol,
                            ws_per_message_deflate=False, lifespan="off", ws_ping_interval=None)
    config.load()
    protocol = WebSocketProtocol(config, ServerState(), app_state={})
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: protocol, ours)
    peer = Peer(theirs)
    assert protocol.event_writer() is None  # no handshake yet
    key = base64.b64encode(os.urandom(16)).decode()
    await peer.send(f"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    assert (await peer.read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    try:
        yield protocol, peer
    finally:
        protocol.transport.abort()
        theirs.close()  # (again, for a test that closed it)
        await asyncio.sleep(0)  # connection_lost, and the app's task sees the disconnect


async def test_write_event_writes_while_open_and_refuses_while_paused(
        opened: tuple[WebSocketProtocol, Peer]) -> None:
    """Open: the event's one frame reaches the peer. Flow control (the peer stops reading
    and the transport's buffer passes its high-water mark) refuses it, and after the peer
    reads on, the frame is taken again."""
    protocol, peer = opened
    write = protocol.event_writer()
    assert write is not None
    event = make_event(7, "message", "hello", conversation_id=1)
    assert write(event)
    assert (await peer.read_until(event.json)).endswith(ws_frame(event))

    protocol.transport.set_write_buffer_limits(high=1024)
    large = make_event(8, "message", "x" * (8 << 20), conversation_id=1)  # more than the kernel buffers hold
    assert write(large)
    assert not protocol.writable.is_set()  # the transport paused it
    assert not write(event)
    async with asyncio.timeout(10):
        while not protocol.writable.is_set():  # the peer reads on: the transport resumes
            await peer.recv()
    assert write(event)


async def test_write_event_refuses_once_the_peer_sent_its_close_before_the_connection_ends(
        opened: tuple[WebSocketProtocol, Peer]) -> None:
    """A close frame from the peer closes the WebSocket at once, while the connection
    itself is still there: nothing is written after it."""
    protocol, _ = opened
    write = protocol.event_writer()
    assert write is not None
    protocol.data_received(Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=True))
    assert not protocol.disconnected and not protocol.close_sent  # only the protocol's state says so
    assert not write(make_event(9, "message", "late", conversation_id=1))


async def test_write_event_refuses_once_the_server_shuts_down(opened: tuple[WebSocketProtocol, Peer]) -> None:
    protocol, peer = opened
    write = protocol.event_writer()
    assert write is not None
    protocol.shutdown()  # the server stopping: a close frame, 1012
    assert not write(make_event(10, "message", "after shutdown", conversation_id=1))
    await peer.read_until(b"\x03\xf4")  # the close frame's code


async def test_write_event_refuses_once_the_connection_is_lost(opened: tuple[WebSocketProtocol, Peer]) -> None:
    """The peer goes without a close frame."""
    protocol, peer = opened
    write = protocol.event_writer()
    assert write is not None
    peer.sock.close()
    async with asyncio.timeout(5):
        while not protocol.disconnected:
            await asyncio.sleep(0.01)
    assert not protocol.close_sent and protocol.conn.state is State.OPEN  # only the loss says so
    assert not write(make_event(11, "message", "after loss", conversation_id=1))
