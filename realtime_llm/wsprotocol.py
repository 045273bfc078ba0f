"""uvicorn's sans-I/O WebSocket protocol, with one fix found by tests/test_fuzz.py.

A text frame that is not UTF-8, arriving once the connection has begun closing, made
uvicorn call `send_close` on a closing connection: InvalidState escaped from
`data_received` and asyncio logged "Fatal error on transport" with two tracebacks. The
frame is dropped instead (the close is already under way), as uvicorn does for any other
frame after its close.
"""
from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def send_receive_event_to_app(self) -> None:
        try:
            super().send_receive_event_to_app()
        except InvalidState:
            self.frames = []
