"""Stream tickets (DESIGN.md, Programmatic and shared access): a browser's EventSource
sends no headers, and a long-lived token in a URL ends up in proxy logs. A ticket is
single use, valid for TICKET_SECONDS, bound to the user's token and to one conversation;
it stands for that token (so the stream it opens ends when the token does).

Kept in Redis where there is one (any process redeems it), else in this process.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import orjson

from realtime_llm.auth import TokenClaims
from realtime_llm.errors import ServiceUnavailable
from realtime_llm.redisclient import REDIS_FAILURES

TICKET_SECONDS = 60
TICKET_PREFIX = "tkt_"
MAX_LOCAL_TICKETS = 100_000  # outstanding in one process without Redis: bounded like all else


def _claims_json(claims: TokenClaims, conversation_id: int) -> bytes:
    return orjson.dumps({"user_id": claims.user_id, "jti": claims.jti, "expires_at": claims.expires_at,
                         "epoch": claims.epoch, "api_token": claims.api_token, "cid": conversation_id})


def _claims_of(raw: bytes, conversation_id: int) -> TokenClaims | None:
    value: dict[str, Any] = orjson.loads(raw)
    if value["cid"] != conversation_id:
        return None
    return TokenClaims(value["user_id"], value["jti"], value["expires_at"], value["epoch"], value["api_token"])


class Tickets:
    """In this process (no Redis: one process serves everything)."""

    def __init__(self) -> None:
        self._tickets: dict[str, tuple[float, bytes]] = {}  # in the order issued, so of expiry

    async def issue(self, claims: TokenClaims, conversation_id: int) -> str:
        now = time.monotonic()
        while self._tickets:  # the expired ones are the oldest
            oldest = next(iter(self._tickets))
            if self._tickets[oldest][0] > now:
                break
            del self._tickets[oldest]
        if len(self._tickets) >= MAX_LOCAL_TICKETS:
            raise ServiceUnavailable("too many stream tickets are outstanding: try again in a minute")
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        self._tickets[ticket] = (now + TICKET_SECONDS, _claims_json(claims, conversation_id))
        return ticket

    async def redeem(self, ticket: str, conversation_id: int) -> TokenClaims | None:
        """The token a ticket stands for, once: None if unknown, used, expired or for another conversation."""
        found = self._tickets.pop(ticket, None)
        if found is None or found[0] <= time.monotonic():
            return None
        return _claims_of(found[1], conversation_id)


# GET and DEL at once, on any Redis version; a script, so that a cluster client does not
# run it again when its answer is late (redisclient.OnceOnTimeoutCluster).
REDEEM = """
local claims = redis.call('GET', KEYS[1])
if claims then redis.call('DEL', KEYS[1]) end
return claims
"""


class RedisTickets(Tickets):
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._redeem = redis.register_script(REDEEM)

    def key(self, ticket: str) -> str:  # the ticket's hash: a look at Redis hands out none
        return f"{self.prefix}:ticket:{hashlib.sha256(ticket.encode()).hexdigest()}"

    async def issue(self, claims: TokenClaims, conversation_id: int) -> str:
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        try:
            await self.redis.set(self.key(ticket), _claims_json(claims, conversation_id), ex=TICKET_SECONDS)
        except REDIS_FAILURES:
            raise ServiceUnavailable("stream tickets are unavailable right now: try again") from None
        return ticket

    async def redeem(self, ticket: str, conversation_id: int) -> TokenClaims | None:
        try:  # single use, in every process
            raw = await self._redeem(keys=[self.key(ticket)])
        except REDIS_FAILURES:
            raise ServiceUnavailable("stream tickets are unavailable right now: try again") from None
        return None if raw is None else _claims_of(raw, conversation_id)
