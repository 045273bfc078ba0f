"""The WebSocket handshake: origin check, accept, authentication (header, ticket or a first
`auth` frame), and the close codes every socket of this server ends with (DESIGN.md,
WebSocket section)."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from realtime_llm.api.access import Caller, authenticate_token, bearer_token, ticket_caller
from realtime_llm.bodies import event_id
from realtime_llm.errors import BadRequest, ServiceUnavailable, Unauthorized
from realtime_llm.metrics import OPEN_WEBSOCKETS
from realtime_llm.services import Services

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_AUTH = 4401
CLOSE_NOT_FOUND = 4404


class CloseSocket(Exception):
    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def accept(websocket: WebSocket, services: Services) -> bool:
    """Complete the handshake, unless a page of another site asks: cross-site WebSocket
    hijacking (refused before the handshake completes: the browser sees a 403)."""
    if not origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host"),
                          services.settings.server.allowed_origins):
        await websocket.close(CLOSE_POLICY)
        return False
    await websocket.accept()
    OPEN_WEBSOCKETS.inc()
    return True


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the server's own origin, or one in the allowlist."""
    if origin is None or "*" in allowed or origin in allowed:
        return True
    return host is not None and urlsplit(origin).netloc == host


async def close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # the peer may be gone already
        await websocket.close(code, reason)


def socket_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 16:
        raise CloseSocket(CLOSE_NOT_FOUND, "conversation not found")
    return int(raw)


async def authenticate(websocket: WebSocket, services: Services) -> tuple[Caller, int | None]:
    """Header auth on the upgrade, or a stream ticket in the URL, else a first
    {"type":"auth"} frame within 10 seconds."""
    token = bearer_token(websocket)
    raw_after: Any = websocket.query_params.get("last_event_id")
    ticket = websocket.query_params.get("ticket")
    if ticket is not None:
        try:
            after = event_id(raw_after)
            return await ticket_caller(services, ticket, socket_id(websocket.path_params["id"])), after
        except (BadRequest, Unauthorized) as exc:
            raise CloseSocket(CLOSE_AUTH, exc.message) from None
        except ServiceUnavailable as exc:  # tickets kept in Redis, which is away
            raise CloseSocket(CLOSE_TRY_AGAIN, exc.message[:120]) from None
    if token is None:
        try:
            async with asyncio.timeout(services.settings.stream.ws_auth_timeout_seconds):
                message = await websocket.receive()
        except TimeoutError:
            raise CloseSocket(CLOSE_AUTH, "authentication timed out") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        frame = parse_frame(message.get("text"))
        if not isinstance(frame, dict) or frame.get("type") != "auth" or not isinstance(frame.get("token"), str):
            raise CloseSocket(CLOSE_AUTH, 'the first frame must be {"type":"auth","token":...}')
        token, raw_after = frame["token"], frame.get("last_event_id")
    try:
        after = event_id(raw_after)
    except BadRequest as exc:
        raise CloseSocket(CLOSE_AUTH, exc.message) from None
    try:
        return await authenticate_token(services, token), after
    except Unauthorized as exc:
        raise CloseSocket(CLOSE_AUTH, exc.message) from None


def parse_frame(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
