"""POST /api/chat/{id} (start, or edit and resend, and stream), POST .../regenerate,
GET /api/chat/{id}/events (watch, resume), POST .../stop."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable

from starlette.requests import Request

from realtime_llm.api.access import (
    Caller,
    bearer_token,
    caller_of,
    check_message_rate,
    credentials,
    require_caller,
    services_of,
    ticket_caller,
)
from realtime_llm.api.docs import ERROR_RESPONSE, event_stream, json_response, operation, ref
from realtime_llm.api.files import attachments_in
from realtime_llm.api.streams import align_event_ids, ended_unseen, stream_end_message, watched_subscription
from realtime_llm.bodies import (
    EVENT_ID_SCHEMA,
    MAX_MESSAGE_ID,
    bounded_int,
    event_id,
    path_id,
    read_json_object,
    validate_message,
)
from realtime_llm.broker.base import (
    BrokerUnavailable,
    ConversationGone,
    SessionEnded,
    ShuttingDown,
    SubscriberOverflow,
    Subscription,
)
from realtime_llm.errors import UpstreamError
from realtime_llm.events import ERROR, SSE_KEEPALIVE, TERMINAL, local_json, sse_frame
from realtime_llm.generation import Generation
from realtime_llm.httpprotocol import ABORT
from realtime_llm.metrics import OPEN_SSE_STREAMS
from realtime_llm.responses import EventStreamResponse, JSONResponse, Last
from realtime_llm.services import Services
from realtime_llm.store.conversations import owned

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


@operation("Send a message; the answer streams as Server-Sent Events",
           {"200": event_stream("events until full_response or error"), "409": ERROR_RESPONSE, "502": ERROR_RESPONSE},
           body="ChatMessage", params=True, limited=True)
async def chat(request: Request) -> EventStreamResponse:
    """Start an answer to a new message (with `edit_message_id`: to that user message,
    edited, with everything after it dropped) and stream it."""
    services = services_of(request)
    checked = await credentials(services, bearer_token(request))
    conversation_id = path_id(request)
    body = await read_json_object(request, services.settings.server)  # (then the conversation as it is now)
    caller, found = await caller_of(services, checked, conversation_id)  # one query for both
    text = validate_message(body.get("message"), services.settings.limits.max_message_chars)
    edit = bounded_int(body.get("edit_message_id"), "edit_message_id", 1, MAX_MESSAGE_ID)
    conversation = owned(found)
    files = await attachments_in(services, body.get("attachments"), caller.user.id)
    await check_message_rate(services, caller.user.id)
    return await answer_stream(request, caller, await services.engine.start(conversation, text, edit, files))


@operation("Replace the last answer with a new one; it streams as Server-Sent Events",
           {"200": event_stream("events until full_response or error"), "409": ERROR_RESPONSE, "502": ERROR_RESPONSE},
           params=True, limited=True)
async def regenerate(request: Request) -> EventStreamResponse:
    """Replace the last answer with a new one, streamed like chat."""
    services = services_of(request)
    checked = await credentials(services, bearer_token(request))
    caller, found = await caller_of(services, checked, path_id(request))
    conversation = owned(found)
    await check_message_rate(services, caller.user.id)
    return await answer_stream(request, caller, await services.engine.regenerate(conversation))


ACCEPT_PATIENCE_SECONDS = 1.0


async def answer_stream(request: Request, caller: Caller, generation: Generation) -> EventStreamResponse:
    # Hold the response until the upstream has accepted, so a refusal is a plain 502; but
    # not past a second: an upstream slow to answer (a queue, a long prompt) must not leave
    # the client without a byte (proxies cut silent streams), so the stream then starts with
    # a keep-alive comment, and a later refusal arrives as an `error` event.
    patience = min(ACCEPT_PATIENCE_SECONDS, services_of(request).settings.stream.keepalive_seconds)
    try:
        async with asyncio.timeout(patience):
            refusal = await asyncio.shield(generation.accepted)
        waiting = False
    except TimeoutError:
        refusal, waiting = None, True
    if refusal is not None:
        raise UpstreamError(refusal)
    events = stream_events(request, caller, generation.conversation_id, after=generation.after_event_id,
                           until_terminal=True, greet=waiting)
    return EventStreamResponse(events, headers=SSE_HEADERS)


@operation("The conversation's events, live; replays after Last-Event-ID first",
           {"200": event_stream("events, until the client leaves")}, params=True,
           query=({"name": "last_event_id", "in": "query", "required": False, "schema": EVENT_ID_SCHEMA},
                  {"name": "Last-Event-ID", "in": "header", "required": False, "schema": EVENT_ID_SCHEMA},
                  {"name": "ticket", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 64},
                   "description": "a stream ticket (POST /api/tickets) instead of the Authorization header"}))
async def events(request: Request) -> EventStreamResponse:
    conversation_id = path_id(request)
    services = services_of(request)
    after = last_event_id(request)  # (checked before a ticket is used up)
    ticket = request.query_params.get("ticket")  # EventSource sends no headers: a ticket instead
    caller = await (require_caller(request) if ticket is None else ticket_caller(services, ticket, conversation_id))
    await services.conversations.get_owned(conversation_id, caller.user.id)
    await align_event_ids(services, conversation_id, after)
    stream = stream_events(request, caller, conversation_id, after=after, until_terminal=False)
    return EventStreamResponse(stream, headers=SSE_HEADERS)


@operation("Stop the running generation (the partial answer is saved)",
           {"200": json_response(ref("Stopped"), "stop requested")}, params=True)
async def stop(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    conversation_id = path_id(request)
    services = services_of(request)
    await services.conversations.get_owned(conversation_id, caller.user.id)
    stopped = await services.locks.request_stop(conversation_id)
    message = "Generation stopped" if stopped else "No generation was running"
    return JSONResponse({"message": message, "stopped": stopped})


def last_event_id(request: Request) -> int | None:
    """The header (EventSource sends it on reconnecting), else the query; both must be valid."""
    header = event_id(request.headers.get("last-event-id"), "Last-Event-ID")
    query = event_id(request.query_params.get("last_event_id"))
    return header if header is not None else query


async def stream_events(
    request: Request, caller: Caller, conversation_id: int, *, after: int | None, until_terminal: bool,
    greet: bool = False,
) -> AsyncIterator[bytes]:
    """SSE frames of the conversation's events; comments keep an idle stream alive (`greet`:
    one at once).

    With `until_terminal` the stream ends after the first `full_response` or `error`
    following `after` (the POST that started a generation); otherwise it runs until the
    client leaves, its token is logged out or expires, or it falls behind.
    """
    services = services_of(request)
    keepalive = services.settings.stream.keepalive_seconds
    abort = request.scope.get("extensions", {}).get(ABORT)
    OPEN_SSE_STREAMS.inc()
    try:
        if greet:  # the first bytes at once: the model has not answered yet
            yield SSE_KEEPALIVE
        async with watched_subscription(services, caller, conversation_id, after) as subscription:
            async with _dropped_when_cut_off(subscription, abort):
                async for frame in _frames(services, subscription, keepalive, until_terminal):
                    yield frame
    except BrokerUnavailable as exc:  # the response has started: the error can only go in-band
        yield Last(_local_error(conversation_id, exc))
    finally:
        OPEN_SSE_STREAMS.dec()


CUT_OFF_GRACE_SECONDS = 2.0


@contextlib.asynccontextmanager
async def _dropped_when_cut_off(subscription: Subscription, abort: Callable[[], None] | None) -> AsyncIterator[None]:
    """A stream cut off while its client does not read is blocked in a send that never
    returns: the connection is dropped instead (at once for a client that fell behind;
    after a grace in which the end-of-stream message can still go out, otherwise)."""
    async def watch() -> None:
        await subscription.cut_off.wait()
        if not isinstance(subscription.failure, SubscriberOverflow):
            await asyncio.sleep(CUT_OFF_GRACE_SECONDS)
        if abort is not None:
            abort()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


# What one chunk joins at most: uvicorn's high-water mark, so that a reader drains the
# subscription's bounded queue no faster than its connection takes the bytes.
JOINED_BYTES = 64 * 1024


async def _frames(services: Services, subscription: Subscription, keepalive: float,
                  until_terminal: bool) -> AsyncIterator[bytes]:
    """The events as SSE frames; those at hand together (an answer's `done` and
    `full_response`, a burst from Redis, a replay) in one chunk, one write to the socket,
    up to JOINED_BYTES."""
    conversation_id = subscription.conversation_id
    while True:
        try:
            event = await subscription.get(timeout=keepalive)
        except (SubscriberOverflow, ConversationGone, ShuttingDown, BrokerUnavailable, SessionEnded) as exc:
            yield Last(_local_error(conversation_id, exc))
            return
        if event is None:
            ended = await ended_unseen(services, subscription, until_terminal)
            if ended is not None:
                yield Last(_local_error(conversation_id, ended))
                return
            yield SSE_KEEPALIVE
            continue
        frames = [sse_frame(event)]
        size = len(frames[0])
        last = until_terminal and event.type in TERMINAL
        while not last and size < JOINED_BYTES and (more := subscription.get_nowait()) is not None:
            frames.append(sse_frame(more))
            size += len(frames[-1])
            last = until_terminal and more.type in TERMINAL
        if last:
            yield Last(b"".join(frames))
            return
        yield b"".join(frames)


def _local_error(conversation_id: int, exc: Exception) -> bytes:
    """An error for this client only: no `id:` line, so its Last-Event-ID stays valid for resuming."""
    return b"event: error\ndata: %s\n\n" % local_json(ERROR, stream_end_message(exc), conversation_id=conversation_id)
