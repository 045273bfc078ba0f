"""/api/conversations/branch and /fork: switch the active branch, or copy one into a new
conversation (DESIGN.md, Branches) — on the caller's own conversations only."""
from __future__ import annotations

from starlette.requests import Request

from realtime_llm.api.access import check_message_rate, require_caller, services_of
from realtime_llm.api.conversations import conversation_json, history_response
from realtime_llm.api.docs import ERROR_RESPONSE, json_response, operation, ref
from realtime_llm.bodies import message_id_of, path_id, read_json_object
from realtime_llm.branches import switch_branch
from realtime_llm.errors import BadRequest
from realtime_llm.responses import JSONResponse


@operation("Make the branch through a message the active one; answers the history",
           {"200": json_response(ref("History"), "history"), "409": ERROR_RESPONSE}, body="MessageChoice", params=True)
async def branch(request: Request) -> JSONResponse:
    """Below the message, the newest version at each step. Refused (409) while an answer runs."""
    caller = await require_caller(request)
    services = services_of(request)
    conversation_id = path_id(request)
    message_id = message_id_of(await read_json_object(request, services.settings.server))
    store = services.conversations
    conversation = await store.get_owned(conversation_id, caller.user.id)
    await switch_branch(services, conversation, message_id)
    return await history_response(store, await store.get_owned(conversation_id, caller.user.id))


@operation("A new conversation with a copy of the branch up to a message",
           {"200": json_response(ref("Conversation"), "the new conversation")}, body="MessageChoice", params=True,
           limited=True)
async def fork(request: Request) -> JSONResponse:
    """Title, model, settings, system prompt and API key come along; message ids start at 1."""
    caller = await require_caller(request)
    services = services_of(request)
    conversation_id = path_id(request)
    message_id = message_id_of(await read_json_object(request, services.settings.server))
    conversation = await services.conversations.get_owned(conversation_id, caller.user.id)
    await check_message_rate(services, caller.user.id)  # a fork writes a whole branch: one message's worth
    forked = await services.conversations.fork(conversation, message_id)
    if forked is None:
        raise BadRequest("'message_id' must name a message of this conversation")
    return JSONResponse(conversation_json(forked))
