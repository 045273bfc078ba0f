"""/api/tokens: API tokens for scripts and services (DESIGN.md, Programmatic and shared
access) — made, listed and deleted by their owner, in a login session; /api/tickets:
single-use stream tickets for browsers."""
from __future__ import annotations

import time

from starlette.requests import Request

from realtime_llm.api.access import Caller, require_caller, services_of
from realtime_llm.api.docs import ERROR_RESPONSE, SECURED, documented, json_response, operation, ref
from realtime_llm.bodies import MAX_ID, bounded_int, read_json_object, required_string
from realtime_llm.errors import BadRequest, Forbidden, NotFound
from realtime_llm.responses import JSONResponse
from realtime_llm.tickets import TICKET_SECONDS

MAX_NAME_CHARS = 100
# A deleted token's revocation is what tells other processes to end its streams; the token
# itself is gone from SQL, so the revocation need outlive only their look back (sessions.py).
REVOCATION_SECONDS = 300
MAX_DAYS = 3650
TOKEN_ID_SCHEMA = {"type": "string", "pattern": "^tok_[A-Za-z0-9_-]{1,30}$"}


def require_login_session(caller: Caller) -> None:
    """An API token does not make or delete API tokens: a leaked one could outlive its
    deletion through the ones it made."""
    if caller.claims.api_token:
        raise Forbidden("API tokens are managed from a login session, not with an API token")


@operation("Make an API token (its secret is shown this once)",
           {"201": json_response(ref("NewApiToken"), "made"), "403": ERROR_RESPONSE}, body="ApiTokenRequest")
async def create(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    require_login_session(caller)
    services = services_of(request)
    body = await read_json_object(request, services.settings.server)
    name = required_string(body, "name", max_chars=MAX_NAME_CHARS).strip()
    if not name:
        raise BadRequest("'name' must not be empty")
    days = bounded_int(body.get("expires_in_days"), "expires_in_days", 1, MAX_DAYS)
    return JSONResponse(await services.api_tokens.create(caller.user.id, name, days), status_code=201)


@operation("The caller's API tokens (without their secrets)",
           {"200": json_response({"type": "array", "items": ref("ApiToken")}, "the tokens")})
async def list_tokens(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    return JSONResponse(await services_of(request).api_tokens.list(caller.user.id))


@documented({
    "summary": "Delete an API token: it stops working at once, its open streams end",
    "security": SECURED,
    "parameters": [{"name": "token_id", "in": "path", "required": True, "schema": TOKEN_ID_SCHEMA}],
    "responses": {"200": json_response(ref("Message"), "deleted"),
                  **{code: ERROR_RESPONSE for code in ("401", "403", "404", "503")}},
})
async def delete(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    require_login_session(caller)
    services = services_of(request)
    token_id = request.path_params["token_id"]
    if len(token_id) > 40 or not any(t["token_id"] == token_id for t in await services.api_tokens.list(caller.user.id)):
        raise NotFound("API token not found")
    # Revoked first (a failure leaves the token as it was, and a retry works), then deleted;
    # its streams end here at once, in other processes at their next look (within a second).
    jti = f"api:{token_id}"
    await services.revocations.revoke(jti, expires_at=int(time.time()) + REVOCATION_SECONDS)
    if not await services.api_tokens.delete(token_id, caller.user.id):
        raise NotFound("API token not found")
    services.sessions.end_session(jti)
    return JSONResponse({"message": "API token deleted"})


TICKETS_PER_MINUTE = 120  # per user: a page asks for one each time it (re)connects


@operation("A single-use stream ticket for one conversation, valid 60 s (for ?ticket= on its "
           "events stream and WebSocket)", {"200": json_response(ref("Ticket"), "the ticket")},
           body="TicketRequest", limited=True)
async def ticket(request: Request) -> JSONResponse:
    """A browser's EventSource cannot send a header, and a token in a URL lands in logs: a
    ticket stands for the caller's token, once, for a minute, on one conversation."""
    caller = await require_caller(request)
    services = services_of(request)
    body = await read_json_object(request, services.settings.server)
    conversation_id = bounded_int(body.get("conversation_id"), "conversation_id", 1, MAX_ID)
    if conversation_id is None:
        raise BadRequest("'conversation_id' is required")
    await services.conversations.get_owned(conversation_id, caller.user.id)
    await services.limiter.check("stream tickets", f"tickets:{caller.user.id}", TICKETS_PER_MINUTE, 60)
    issued = await services.tickets.issue(caller.claims, conversation_id)
    return JSONResponse({"ticket": issued, "expires_in": TICKET_SECONDS})
