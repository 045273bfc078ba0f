"""/api/conversations/*: create, list, history, delete — each on the caller's own only."""
from __future__ import annotations

import contextlib

from starlette.requests import Request
from starlette.responses import JSONResponse

from realtime_llm.api.access import require_caller, services_of
from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.bodies import optional_string, path_id, read_json_object
from realtime_llm.errors import BadRequest
from realtime_llm.store.conversations import Conversation


def conversation_json(conversation: Conversation) -> dict[str, object]:
    return {
        "conversation_id": conversation.id,
        "title": conversation.title,
        "model": conversation.model,
        "api_key": conversation.api_key_hint,
        "created_time": conversation.created_time,
    }


async def create(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    services = services_of(request)
    limits = services.settings.limits
    body = await read_json_object(request, services.settings.server.max_body_bytes, allow_empty=True)
    title = optional_string(body, "title", max_chars=limits.max_title_chars)
    if title is not None and not title.strip():
        raise BadRequest("'title' must not be empty")
    model = optional_string(body, "model", max_chars=200) or services.settings.llm.default_model
    if not services.catalog.can_serve(model):
        raise BadRequest(f"model '{model}' is not served here; see GET /api/models")
    api_key = optional_string(body, "api_key", max_chars=limits.max_api_key_chars) or ""
    system_prompt = optional_string(body, "system_prompt", max_chars=limits.max_system_prompt_chars) or ""
    conversation = await services.conversations.create(
        caller.user.id,
        title=(title or "").strip(),
        model=model,
        system_prompt=system_prompt,
        api_key=api_key.strip(),
    )
    return JSONResponse(conversation_json(conversation))


async def list_conversations(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    return JSONResponse(await services_of(request).conversations.list_for_user(caller.user.id))


async def history(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    conversation_id = path_id(request)
    store = services_of(request).conversations
    conversation = await store.get_owned(conversation_id, caller.user.id)
    return JSONResponse(
        {
            "conversation_id": conversation.id,
            "title": conversation.title,
            "model": conversation.model,
            "messages": await store.history(conversation),
            "created_time": conversation.created_time,
        }
    )


async def delete(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    conversation_id = path_id(request)
    services = services_of(request)
    await services.conversations.delete_owned(conversation_id, caller.user.id)
    # A generation still running is stopped; its buffered events and subscriptions go too.
    # The delete itself has succeeded in SQL: a broker outage must not turn it into an error
    # (its Redis keys expire on their own).
    with contextlib.suppress(BrokerUnavailable):
        await services.broker.request_stop(conversation_id)
        await services.broker.drop(conversation_id)
    return JSONResponse({"message": "Conversation deleted successfully"})
