"""uvicorn's sans-I/O WebSocket protocol, with three fixes; each makes sure a client learns
why its socket closed (the close code DESIGN.md promises) instead of seeing 1006.

1. A close waits for nothing. uvicorn's `send` first waits for the write buffer to drain,
   which for a client that stopped reading is never: the socket that cut such a client
   off (1008, it fell behind) hung in its close until the keep-alive failed the
   connection instead. The close frame now goes behind what is already buffered
   (tests/test_ws.py, a client that does not read).

2. A failed connection lingers. When uvicorn fails a connection (a frame too large: 1009,
   not UTF-8: 1007, a protocol error: 1002, no pong: 1011) it sends the close frame and
   closes the socket at once. A client still sending then gets a TCP reset, and a reset
   discards what the client had not read yet, close frame included: it saw a broken pipe
   and 1006 (tests/test_fuzz.py). Now the server half-closes, reads and drops whatever the
   client still sends until it closes its side, and aborts after `close_timeout` a
   client that never does.

3. Found by tests/test_fuzz.py: a text frame that is not UTF-8, arriving once the
   connection has begun closing, made uvicorn call `send_close` on a closing connection:
   InvalidState escaped from `data_received` and asyncio logged "Fatal error on
   transport" with two tracebacks. The frame is dropped instead (the close is already
   under way), as uvicorn does for any other frame after its close.

And one addition: a conversation's event goes to every socket watching it as the same
bytes, framed once (`events.ws_frame`), written straight to each connection by the
broker's delivery loop (`write_event`, a Subscription's sink) instead of through a task
per socket, Starlette's and uvicorn's `send` and a framing per socket. Flow control and
the close are those of `send`: a paused or closing connection takes nothing, and its
events wait in the subscription's bounded queue for its task.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.protocol import State

from realtime_llm.events import Event, ws_frame

FRAMES = "realtime_llm.frames"  # the ASGI scope's extension holding the connection's event_writer


def event_writer(scope: Mapping[str, Any]) -> Callable[[Event], bool] | None:
    """Writes an event to the socket of `scope` at once, or returns False (see write_event);
    None when the server is not ours (a test client's) or the connection's frames are not
    ours to build."""
    extension = scope.get("extensions", {}).get(FRAMES)
    if extension is None:
        return None
    writer: Callable[[], Callable[[Event], bool] | None] = extension["event_writer"]
    return writer()


class WebSocketProtocol(WebSocketsSansIOProtocol):
    lingering = False
    write_paused = False  # by flow control, while the socket is open: `writable` as a plain flag for write_event

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the handshake was refused (a 4xx sent)
        if scope is not None:
            scope["extensions"][FRAMES] = {"event_writer": self.event_writer}

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the scope held this protocol: a cycle the GC would have to find
            scope["extensions"].pop(FRAMES, None)

    def event_writer(self) -> Callable[[Event], bool] | None:
        """write_event, once the socket is open (the handshake done and accepted) with no
        extension that would change frames; None otherwise. (None of that changes later.)"""
        if self.handshake_complete and self.initial_response is None and not self.conn.extensions:
            return self.write_event
        return None

    def write_event(self, event: Event) -> bool:
        """Write an event's frame, as `send` would write it, if the connection can take it
        now: not paused by flow control, not lost, and no close frame sent or received (the
        protocol's state says both: every close uvicorn or _linger sends goes through it).
        False otherwise. This runs for every socket and event of a fan-out, so its checks
        are attributes, but for the protocol's state (a property): each Python call on this
        path showed in the fan-out's CPU per frame (tests/test_wsprotocol.py)."""
        if self.write_paused or self.disconnected or self.conn.state is not State.OPEN:
            return False
        self.transport.write(ws_frame(event))
        return True

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_paused = False

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "websocket.close" and self.handshake_complete:
            self.writable.set()  # nothing is sent after a close: flow control has no more use
        await super().send(message)

    def send_receive_event_to_app(self) -> None:
        try:
            super().send_receive_event_to_app()
        except InvalidState:
            self.frames = []

    def data_received(self, data: bytes) -> None:
        if not self.lingering:  # else the connection failed: what still comes is dropped
            super().data_received(data)

    def handle_ping(self) -> None:
        if not self.lingering:  # a ping that came with the failing frame: no pong after the EOF
            super().handle_ping()

    def handle_parser_exception(self) -> None:
        assert self.conn.close_sent is not None
        self.queue.put_nowait({"type": "websocket.disconnect", "code": self.conn.close_sent.code,
                               "reason": self.conn.close_sent.reason})
        self._linger()

    def keepalive_timeout(self) -> None:
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():
            return
        self.conn.fail(1011, "keepalive ping timeout")
        self._linger()

    def _linger(self) -> None:
        """Send the close frame, half-close, and wait for the client to close its side
        (the transport then closes itself) or abort after close_timeout."""
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.lingering = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
