"""Who is asking: the bearer token of a request, checked."""
from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from realtime_llm.auth import API_TOKEN_PREFIX, InvalidToken, TokenClaims
from realtime_llm.errors import Unauthorized
from realtime_llm.services import Services
from realtime_llm.store.records import Conversation
from realtime_llm.store.users import User


@dataclass(frozen=True)
class Caller:
    user: User
    claims: TokenClaims


def services_of(connection: HTTPConnection) -> Services:
    return connection.app.state.services  # type: ignore[no-any-return]


def bearer_token(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True)
class Credentials:
    """A bearer token, checked as far as it is before a request is read further: a login
    token's signature and expiry (its claims; whether it was revoked since is read with
    the conversation, caller_of), or an API token looked up (its caller). Made by
    credentials() alone."""

    claims: TokenClaims | None = None
    caller: Caller | None = None


async def credentials(services: Services, token: str | None) -> Credentials:
    """A 401 for a missing, forged or expired login token, or an unknown API token."""
    if not token:
        raise Unauthorized("missing bearer token")
    if token.startswith(API_TOKEN_PREFIX):
        found = await services.users.api_token(token)
        if found is None:
            raise Unauthorized("invalid, expired or deleted API token")
        return Credentials(caller=Caller(*found))
    try:
        return Credentials(claims=services.tokens.verify(token))
    except InvalidToken:
        raise Unauthorized("invalid or expired token") from None


async def authenticate_token(services: Services, token: str | None) -> Caller:
    """The user a token speaks for; any doubt (forged, expired, revoked, user gone) is a 401."""
    caller, _ = await caller_of(services, await credentials(services, token))
    return caller


async def caller_of(services: Services, checked: Credentials,
                    conversation_id: int | None = None) -> tuple[Caller, Conversation | None]:
    """The user checked credentials speak for (a 401 if the login token was revoked, or
    its user is gone), and with `conversation_id` that conversation if it is theirs (None
    if not, or gone: the caller answers 404 where it would have read it). For a login
    token both are one query."""
    if checked.caller is not None:
        conversation = (None if conversation_id is None
                        else await services.conversations.find_owned(conversation_id, checked.caller.user.id))
        return checked.caller, conversation
    claims = checked.claims
    assert claims is not None
    if conversation_id is None:
        user, conversation = await services.users.holder(claims), None
    else:
        user, conversation = await services.users.holder_and_conversation(claims, conversation_id)
    if user is None:  # the user is gone, or this token was revoked by logout, or all sessions ended
        raise Unauthorized("invalid, expired or revoked token")
    return Caller(user=user, claims=claims), conversation


async def ticket_caller(services: Services, ticket: str, conversation_id: int) -> Caller:
    """The caller a stream ticket stands for, on the conversation it was given for; used up."""
    claims = await services.tickets.redeem(ticket, conversation_id) if len(ticket) <= 64 else None
    user = await services.users.holder(claims) if claims is not None and claims.expires_at > time.time() else None
    if claims is None or user is None:
        raise Unauthorized("invalid, used or expired ticket (or one for another conversation)")
    return Caller(user=user, claims=claims)


async def require_caller(connection: HTTPConnection) -> Caller:
    return await authenticate_token(services_of(connection), bearer_token(connection))


async def check_message_rate(services: Services, user_id: int) -> None:
    """Chat messages and regenerations, per user, over HTTP and WebSocket together."""
    await services.limiter.check("messages", f"messages:{user_id}",
                                 services.settings.limits.messages_per_minute_per_user, 60)
