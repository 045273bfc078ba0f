"""A subscriber's stream, for SSE and WebSocket alike: how it opens (ids aligned with what
the client has seen, subscribed, watched for the end of its token), how an idle one finds
out that what it waits for is gone, and why it ended, in words for a person."""
from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

from realtime_llm.api.access import Caller
from realtime_llm.broker.base import (
    BrokerUnavailable,
    ConversationGone,
    SessionEnded,
    ShuttingDown,
    SubscriberOverflow,
    Subscription,
)
from realtime_llm.events import ERROR, TERMINAL
from realtime_llm.services import Services


@contextlib.asynccontextmanager
async def watched_subscription(services: Services, caller: Caller, conversation_id: int,
                               after: int | None) -> AsyncIterator[Subscription]:
    """The conversation's events after `after` (or live from now), ended when the caller's
    token is logged out or expires. (align_event_ids first: before a response starts.)"""
    async with services.broker.subscribe(conversation_id, after) as subscription:
        with services.sessions.watch(caller.claims, lambda: subscription.fail(SessionEnded())):
            yield subscription


async def align_event_ids(services: Services, conversation_id: int, after: int | None) -> None:
    """A client that has seen ids beyond this server's latest (its buffer was lost: a
    restart without Redis, a flush) gets ids above its own from now on, never repeats it
    would drop as duplicates. The owner's own conversation only; ids stay below 2**52."""
    if after is not None and after < 2**52 and after > await services.broker.last_event_id(conversation_id):
        await services.broker.ensure_event_floor(conversation_id, after)


class GenerationVanished(Exception):
    """The awaited generation ended without its last event reaching this stream."""


async def ended_unseen(services: Services, subscription: Subscription, until_terminal: bool) -> Exception | None:
    """On an idle stream: has the conversation gone, or the awaited generation ended without
    its final event reaching us? Both would otherwise leave the stream waiting forever.

    With Redis, pub/sub delivery may trail the lock's release, so events the replay buffer
    holds beyond what we have seen are taken from there (repeats are dropped by id)."""
    conversation_id = subscription.conversation_id
    if not await services.conversations.exists(conversation_id):
        return ConversationGone()
    if until_terminal and await services.locks.holder(conversation_id) is None:
        missed = await services.broker.replay(conversation_id, subscription.last_id)
        if missed:
            subscription.add_backlog(missed)
            return None
        return GenerationVanished()
    return None


def stream_end_message(exc: Exception) -> str:
    """Why a subscriber's stream ended, in words for a person."""
    if isinstance(exc, ConversationGone):
        return "this conversation was deleted"
    if isinstance(exc, GenerationVanished):
        return "the answer was interrupted; reload the conversation to see what was saved"
    if isinstance(exc, ShuttingDown):
        return "the server is restarting; reconnect to resume"
    if isinstance(exc, SessionEnded):
        return "your session ended (logged out or expired); log in again to go on watching"
    if isinstance(exc, BrokerUnavailable):
        return "live updates are unavailable right now; reconnect to resume"
    return "you fell too far behind the stream; reconnect with Last-Event-ID to resume"


async def generation_events(services: Services, caller: Caller, conversation_id: int,
                            after: int) -> AsyncIterator[dict[str, Any] | None]:
    """A generation's events after `after`, as objects, until its `full_response` or
    `error`; None when idle for a keep-alive period (the caller may send a ping). A stream
    that ends early ends with an `error` object saying why."""
    keepalive = services.settings.stream.keepalive_seconds
    async with watched_subscription(services, caller, conversation_id, after) as subscription:
        while True:
            try:
                event = await subscription.get(timeout=keepalive)
            except (SubscriberOverflow, ConversationGone, ShuttingDown, BrokerUnavailable, SessionEnded) as exc:
                yield {"event": ERROR, "data": stream_end_message(exc)}
                return
            if event is None:
                ended = await ended_unseen(services, subscription, until_terminal=True)
                if ended is not None:
                    yield {"event": ERROR, "data": stream_end_message(ended)}
                    return
                yield None
                continue
            yield event.payload
            if event.type in TERMINAL:
                return
