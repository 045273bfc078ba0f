"""/ws/conversations/{id}: one WebSocket per open conversation (DESIGN.md, WebSocket section)."""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from realtime_llm.api.access import Caller, check_message_rate, services_of
from realtime_llm.api.files import attachments_in
from realtime_llm.api.shares import viewer
from realtime_llm.api.streams import align_event_ids, stream_end_message, watched_subscription
from realtime_llm.api.wshandshake import (
    CLOSE_AUTH,
    CLOSE_GOING_AWAY,
    CLOSE_NOT_FOUND,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    CloseSocket,
    accept,
    authenticate,
    close,
    parse_frame,
    socket_id,
)
from realtime_llm.bodies import MAX_MESSAGE_ID, bounded_int, event_id, message_id_of, validate_message
from realtime_llm.branches import SWITCH_OWNER, switch_branch
from realtime_llm.broker.base import (
    BrokerUnavailable,
    ConversationGone,
    SessionEnded,
    ShuttingDown,
    SubscriberOverflow,
    Subscription,
)
from realtime_llm.errors import BadRequest, ConversationNotFound, NotFound, as_api_error
from realtime_llm.events import ERROR, local_json
from realtime_llm.metrics import OPEN_WEBSOCKETS
from realtime_llm.ratelimit import RateLimited, RateLimiter
from realtime_llm.services import Services
from realtime_llm.wsprotocol import event_writer

STREAM_ENDINGS = (SubscriberOverflow, ShuttingDown, ConversationGone, BrokerUnavailable, SessionEnded)


async def conversation_socket(websocket: WebSocket) -> None:
    services = services_of(websocket)
    if not await accept(websocket, services):
        return
    conversation_id = None
    try:
        caller, after = await authenticate(websocket, services)
        conversation_id = socket_id(websocket.path_params["id"])
        await services.conversations.get_owned(conversation_id, caller.user.id)
        async with services.seats.hold(caller.user.id):
            await align_event_ids(services, conversation_id, after)
            # Logout or expiry of the token ends the socket (4401), whatever it is doing.
            async with watched_subscription(services, caller, conversation_id, after) as subscription:
                await ConversationSocket(websocket, services, caller, conversation_id, subscription).run()
    except CloseSocket as closing:
        await close(websocket, closing.code, closing.reason)
    except ConversationNotFound:
        await close(websocket, CLOSE_NOT_FOUND, "conversation not found")
    except RateLimited as exc:  # too many sockets open
        with contextlib.suppress(Exception):
            await websocket.send_text(local_json(ERROR, exc.message, code=exc.code,
                                                 conversation_id=conversation_id).decode())
        await close(websocket, CLOSE_POLICY, "rate limit")
    except BrokerUnavailable:
        await close(websocket, CLOSE_TRY_AGAIN, "live updates are unavailable right now")
    except WebSocketDisconnect:
        pass
    finally:
        OPEN_WEBSOCKETS.dec()


async def shared_socket(websocket: WebSocket) -> None:
    """/ws/shared/{share_id}: a share link's live view, read-only, no authentication; it ends
    (4404) when the link is removed."""
    services = services_of(websocket)
    if not await accept(websocket, services):
        return
    try:
        caller, conversation_id = await viewer(websocket, services)
        after = event_id(websocket.query_params.get("last_event_id"))
        async with watched_subscription(services, caller, conversation_id, after) as subscription:
            await ConversationSocket(websocket, services, caller, conversation_id, subscription, read_only=True).run()
    except CloseSocket as closing:
        await close(websocket, closing.code, closing.reason)
    except NotFound:
        await close(websocket, CLOSE_NOT_FOUND, "no such shared conversation")
    except BadRequest as exc:
        await close(websocket, CLOSE_POLICY, exc.message[:120])
    except RateLimited:
        await close(websocket, CLOSE_POLICY, "rate limit")
    except BrokerUnavailable:
        await close(websocket, CLOSE_TRY_AGAIN, "live updates are unavailable right now")
    except WebSocketDisconnect:
        pass
    finally:
        OPEN_WEBSOCKETS.dec()


class ConversationSocket:
    """An authenticated socket on one conversation: events out, commands in."""

    def __init__(self, websocket: WebSocket, services: Services, caller: Caller, conversation_id: int,
                 subscription: Subscription, read_only: bool = False) -> None:
        self.websocket = websocket
        self.services = services
        self.caller = caller
        self.conversation_id = conversation_id
        self.subscription = subscription
        self.read_only = read_only  # a share link's viewer: events out, resume and ping in
        self._send_lock = asyncio.Lock()
        self.frames = RateLimiter()  # this socket's own frame counter

    async def send(self, payload: bytes) -> None:
        async with self._send_lock:
            try:
                await self.websocket.send_text(payload.decode())
            except (RuntimeError, OSError) as exc:
                # Closed under us: uvicorn itself closes on a frame too large (1009) or
                # not UTF-8 (1007), and then refuses sends with a RuntimeError.
                raise WebSocketDisconnect(1006) from exc

    async def send_error(self, message: str, code: str = "bad_request") -> None:
        await self.send(local_json(ERROR, message, conversation_id=self.conversation_id, code=code))

    async def run(self) -> None:
        holder = await self.services.locks.holder(self.conversation_id)
        generating = holder is not None and not holder.startswith(SWITCH_OWNER)  # a switch holds it a moment
        await self.send(local_json(
            "ready", "", conversation_id=self.conversation_id, generating=generating,
            last_event_id=max(self.subscription.last_id,
                              await self.services.broker.last_event_id(self.conversation_id)),
        ))
        self.subscription.sink = event_writer(self.websocket.scope)  # after `ready`, which comes first
        pump = asyncio.create_task(self._pump_events())
        read = asyncio.create_task(self._read_frames())
        # A client that stops reading leaves the pump blocked in a send while its queue
        # overflows: the cut-off is watched apart from the pump, so it ends the socket at once.
        cut_off = asyncio.create_task(self.subscription.cut_off.wait())
        try:
            done, _ = await asyncio.wait({pump, read, cut_off}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, read, cut_off):
                task.cancel()
            await asyncio.gather(pump, read, cut_off, return_exceptions=True)
        for task in (pump, read):
            if task in done and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if isinstance(exc, STREAM_ENDINGS):
                    await self._stream_ended(exc)
                raise exc  # type: ignore[misc]
        if cut_off in done:
            assert self.subscription.failure is not None
            await self._stream_ended(self.subscription.failure)

    async def _pump_events(self) -> None:
        """Conversation events to the socket, until the subscription ends (STREAM_ENDINGS).
        A client that stops reading blocks the send, its bounded queue fills, and it is cut
        off: it never grows the server's memory."""
        while True:
            event = await self.subscription.get()
            assert event is not None
            await self.send(event.json)

    async def _stream_ended(self, exc: Exception) -> None:
        code = {SubscriberOverflow: CLOSE_POLICY, ShuttingDown: CLOSE_GOING_AWAY, SessionEnded: CLOSE_AUTH,
                ConversationGone: CLOSE_NOT_FOUND, BrokerUnavailable: CLOSE_TRY_AGAIN}[type(exc)]
        if self.read_only and code == CLOSE_AUTH:  # a viewer's link was removed
            code = CLOSE_NOT_FOUND
        if not isinstance(exc, SubscriberOverflow):  # a client that does not read gets nothing more
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await self.send_error(stream_end_message(exc), code="stream_ended")
        raise CloseSocket(code, stream_end_message(exc)[:120])

    async def _read_frames(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                raise CloseSocket(CLOSE_UNSUPPORTED, "binary frames are not supported")
            try:  # a flood of frames, whatever they are
                await self.frames.check("frames", "socket", self.services.settings.limits.ws_frames_per_10_seconds, 10)
            except RateLimited as exc:
                await self.send_error(exc.message, exc.code)
                raise CloseSocket(CLOSE_POLICY, "rate limit") from None
            frame = parse_frame(message.get("text"))
            if not isinstance(frame, dict):
                await self.send_error("a frame must be a JSON object")
                continue
            try:
                await self._handle(frame)
            except ConversationNotFound:
                raise CloseSocket(CLOSE_NOT_FOUND, "conversation not found") from None
            except RateLimited as exc:
                await self.send_error(exc.message, exc.code)
                raise CloseSocket(CLOSE_POLICY, "rate limit") from None
            except Exception as exc:
                error = as_api_error(exc)
                if error is None:
                    raise
                await self.send_error(error.message, error.code)

    async def _handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if self.read_only and kind in ("message", "regenerate", "stop", "branch"):
            await self.send_error("this is a shared conversation: it can be watched, not changed", "forbidden")
            return
        if kind in ("message", "regenerate", "stop", "resume", "branch") and not self.read_only:
            await self._still_authorised()  # (a viewer's link is watched: its removal ends the socket)
        if kind == "ping":
            await self.send(local_json("pong", ""))
        elif kind == "message":
            await self._start_generation(frame)
        elif kind == "regenerate":
            conversation = await self.services.conversations.get_owned(self.conversation_id, self.caller.user.id)
            await check_message_rate(self.services, self.caller.user.id)
            await self.services.engine.regenerate(conversation)
        elif kind == "stop":
            await self.services.conversations.get_owned(self.conversation_id, self.caller.user.id)
            await self.services.locks.request_stop(self.conversation_id)
        elif kind == "resume":
            await self._resume(frame)
        elif kind == "branch":  # this socket, like every other, then gets the `branch` event
            conversation = await self.services.conversations.get_owned(self.conversation_id, self.caller.user.id)
            await switch_branch(self.services, conversation, message_id_of(frame))
        elif kind == "auth":
            await self.send_error("this socket is already authenticated")
        elif isinstance(kind, str):
            await self.send_error(f"unknown frame type {kind[:40]!r}")
        else:
            await self.send_error("a frame needs a string 'type'")

    async def _still_authorised(self) -> None:
        """A socket lives longer than a check at the door: an expired or logged-out token
        ends it (4401) at its next command."""
        claims = self.caller.claims
        if claims.expires_at <= time.time() or await self.services.users.holder(claims) is None:
            raise CloseSocket(CLOSE_AUTH, "token expired or revoked")

    async def _start_generation(self, frame: dict[str, Any]) -> None:
        content = validate_message(frame.get("content"), self.services.settings.limits.max_message_chars, "content")
        edit = bounded_int(frame.get("edit_message_id"), "edit_message_id", 1, MAX_MESSAGE_ID)
        conversation = await self.services.conversations.get_owned(self.conversation_id, self.caller.user.id)
        files = await attachments_in(self.services, frame.get("attachments"), self.caller.user.id)
        await check_message_rate(self.services, self.caller.user.id)
        await self.services.engine.start(conversation, content, edit, files)

    async def _resume(self, frame: dict[str, Any]) -> None:
        after = event_id(frame.get("last_event_id"))  # a bad one is an error event, via _read_frames
        if after is None:
            await self.send_error("'last_event_id' is required: a non-negative integer")
            return
        for event in await self.services.broker.resume(self.conversation_id, after):
            await self.send(event.json)
