"""Share links (DESIGN.md, Programmatic and shared access): the owner shares or unshares a
conversation; anyone holding the link reads its history and watches it live, read-only
(no API key, no system prompt), until it is unshared — which ends every open viewer."""
from __future__ import annotations

import re
import time

from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse

from realtime_llm.api.access import Caller, require_caller, services_of
from realtime_llm.api.chat import SSE_HEADERS, last_event_id, stream_events
from realtime_llm.api.docs import ERROR_RESPONSE, documented, event_stream, json_response, operation, ref
from realtime_llm.api.page import PAGE_HEADERS, STATIC_DIR
from realtime_llm.auth import NEVER, TokenClaims
from realtime_llm.bodies import path_id
from realtime_llm.errors import NotFound
from realtime_llm.params import load_params
from realtime_llm.responses import EventStreamResponse, JSONResponse
from realtime_llm.services import Services
from realtime_llm.store.users import User

SHARE_ID = re.compile(r"shr_[A-Za-z0-9_-]{1,35}")
SHARE_PARAM = {"name": "share_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": f"^{SHARE_ID.pattern}$", "maxLength": 40}}
VIEWS_PER_MINUTE_PER_ADDRESS = 120  # history reads and streams opened through share links
SHARE_JTI = "share:"  # a viewer's stream is watched under this, revoked by an unshare


@operation("Share a conversation read-only; sharing again answers the same link",
           {"200": json_response(ref("Share"), "the link")}, params=True)
async def share(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    services = services_of(request)
    conversation = await services.conversations.get_owned(path_id(request), caller.user.id)
    share_id = await services.shares.share(conversation)
    return JSONResponse({"share_id": share_id, "url": f"/s/{share_id}"})


@operation("Stop sharing a conversation: its link stops working, open viewers end",
           {"200": json_response(ref("Message"), "unshared")}, params=True)
async def unshare(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    services = services_of(request)
    conversation = await services.conversations.get_owned(path_id(request), caller.user.id)
    share_id = await services.shares.shared_id(conversation)
    if share_id is not None:  # revoked first, then removed; its viewers end here at once, elsewhere within a second
        await services.revocations.revoke(SHARE_JTI + share_id, expires_at=int(time.time()) + 300)
        await services.shares.unshare(conversation)
        services.sessions.end_session(SHARE_JTI + share_id)
    return JSONResponse({"message": "Conversation unshared" if share_id else "Conversation was not shared"})


async def viewer(connection: HTTPConnection, services: Services) -> tuple[Caller, int]:
    """Who watches through a share link, and which conversation: the owner's, read-only,
    under a watch that the link's removal ends. Viewers are counted per address."""
    share_id = connection.path_params["share_id"]
    found = await services.shares.shared(share_id) if SHARE_ID.fullmatch(share_id) else None
    if found is None:
        raise NotFound("no such shared conversation")
    address = connection.client.host if connection.client else "unknown"
    await services.limiter.check("views of shared conversations", f"views:{address}", VIEWS_PER_MINUTE_PER_ADDRESS, 60)
    conversation_id, owner = found
    claims = TokenClaims(owner, SHARE_JTI + share_id, NEVER, api_token=True)  # not a login: no password ends it
    return Caller(User(owner, "", "", 0), claims), conversation_id


@documented({"summary": "A shared conversation's history (no API key, no system prompt)",
             "parameters": [SHARE_PARAM],
             "responses": {"200": json_response(ref("History"), "the history"),
                           **{code: ERROR_RESPONSE for code in ("404", "429", "503")}}})
async def shared_history(request: Request) -> JSONResponse:
    services = services_of(request)
    caller, conversation_id = await viewer(request, services)
    store = services.conversations
    conversation = await store.get_owned(conversation_id, caller.user.id)
    history = await store.messages.history(conversation)
    return JSONResponse({"conversation_id": conversation.id, "title": conversation.title, "model": conversation.model,
                         "messages": history, "created_time": conversation.created_time,
                         "params": load_params(conversation.params)})


@documented({"summary": "A shared conversation's events, live (read-only); resumes after Last-Event-ID",
             "parameters": [SHARE_PARAM],
             "responses": {"200": event_stream("events, until the client leaves or the link is removed"),
                           **{code: ERROR_RESPONSE for code in ("400", "404", "429", "503")}}})
async def shared_events(request: Request) -> EventStreamResponse:
    services = services_of(request)
    caller, conversation_id = await viewer(request, services)
    after = last_event_id(request)
    stream = stream_events(request, caller, conversation_id, after=after, until_terminal=False)
    return EventStreamResponse(stream, headers=SSE_HEADERS)


@documented({"summary": "The read-only page of a shared conversation",
             "parameters": [SHARE_PARAM],
             "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                           "404": ERROR_RESPONSE}})
async def shared_page(request: Request) -> FileResponse:
    """The page itself (its script reads the link's history: an unknown one says so)."""
    if not SHARE_ID.fullmatch(request.path_params["share_id"]):
        raise NotFound("no such shared conversation")
    return FileResponse(STATIC_DIR / "share.html", headers=PAGE_HEADERS)
