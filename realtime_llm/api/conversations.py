"""/api/conversations/*: create, list (paged, searched), update, history, export, delete —
each on the caller's own only."""
from __future__ import annotations

import asyncio
import contextlib
import re
import time

from starlette.requests import Request
from starlette.responses import Response

from realtime_llm.api.access import require_caller, services_of
from realtime_llm.api.docs import json_response, operation, ref
from realtime_llm.bodies import NO_NUL, bounded_int, optional_string, path_id, read_json_object
from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.errors import BadRequest
from realtime_llm.events import TITLE
from realtime_llm.params import dump_params, load_params, parse_params
from realtime_llm.responses import JSONResponse
from realtime_llm.services import Services
from realtime_llm.store.conversations import LIST_LIMIT_MAX, ConversationStore
from realtime_llm.store.records import Conversation, Message
from realtime_llm.store.shapes import message_json
from realtime_llm.store.tree import Tree

UPDATABLE = frozenset({"title", "model", "system_prompt", "api_key", "params"})
MAX_QUERY_CHARS = 200


def conversation_json(conversation: Conversation) -> dict[str, object]:
    return {
        "conversation_id": conversation.id,
        "title": conversation.title,
        "model": conversation.model,
        "api_key": conversation.api_key_hint,
        "created_time": conversation.created_time,
        "params": load_params(conversation.params),
    }


@operation("Create a conversation", {"200": json_response(ref("Conversation"), "created")},
           body="NewConversation", body_required=False)
async def create(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    services = services_of(request)
    limits = services.settings.limits
    body = await read_json_object(request, services.settings.server, allow_empty=True)
    title = optional_string(body, "title", max_chars=limits.max_title_chars)
    if title is not None and not title.strip():
        raise BadRequest("'title' must not be empty")
    model = optional_string(body, "model", max_chars=200) or services.settings.llm.default_model
    if not services.catalog.can_serve(model):
        raise BadRequest(f"model '{model}' is not served here; see GET /api/models")
    api_key = optional_string(body, "api_key", max_chars=limits.max_api_key_chars) or ""
    system_prompt = optional_string(body, "system_prompt", max_chars=limits.max_system_prompt_chars) or ""
    params = parse_params(body["params"]) if body.get("params") is not None else {}
    conversation = await services.conversations.create(
        caller.user.id,
        title=(title or "").strip(),
        model=model,
        system_prompt=system_prompt,
        api_key=api_key.strip(),
        params=dump_params(params),
    )
    return JSONResponse(conversation_json(conversation))


@operation("The caller's conversations, newest first; paged and searched",
           {"200": json_response({"type": "array", "items": ref("ConversationSummary")}, "list")},
           query=({"name": "limit", "in": "query", "required": False,
                   "schema": {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX}},
                  {"name": "before", "in": "query", "required": False,
                   "description": "continue after this conversation id (the last one seen)",
                   "schema": {"type": "integer", "minimum": 1, "maximum": 2**53}},
                  {"name": "q", "in": "query", "required": False,
                   "description": "text in titles or messages, case-insensitive, literal",
                   "schema": {"type": "string", "maxLength": MAX_QUERY_CHARS, "pattern": NO_NUL}}))
async def list_conversations(request: Request) -> JSONResponse:
    """Newest first; `limit` pages, `before` continues after the last id seen, `q` searches.
    Without parameters: every conversation, as the original answered."""
    caller = await require_caller(request)
    params = request.query_params
    limit = bounded_int(params.get("limit"), "limit", 1, LIST_LIMIT_MAX)
    before = bounded_int(params.get("before"), "before", 1, 2**53)
    q = params.get("q")
    if q is not None:
        q = q.strip()
        if len(q) > MAX_QUERY_CHARS or "\x00" in q:
            raise BadRequest(f"'q' must be at most {MAX_QUERY_CHARS} characters, without NUL")
    found = await services_of(request).conversations.list_for_user(
        caller.user.id, limit=limit, before=before, q=q or None)
    return JSONResponse(found)


@operation("Change title, model, system prompt or API key", {"200": json_response(ref("Conversation"), "updated")},
           body="ConversationUpdate", params=True)
async def update(request: Request) -> JSONResponse:
    """Change any of title, model, system_prompt, api_key. A generation already running
    keeps what it started with (nothing is refused); the next one uses the new settings."""
    caller = await require_caller(request)
    services = services_of(request)
    limits = services.settings.limits
    conversation_id = path_id(request)
    body = await read_json_object(request, services.settings.server)
    unknown = sorted(set(body) - UPDATABLE)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; updatable: {', '.join(sorted(UPDATABLE))}")
    nulls = sorted(name for name, value in body.items() if value is None)
    if nulls:  # leave a field out to keep it; "" clears the API key, a null in params one setting
        raise BadRequest(f"'{nulls[0]}' must be {'an object' if nulls[0] == 'params' else 'a string'}")
    changes: dict[str, str] = {}
    title = optional_string(body, "title", max_chars=limits.max_title_chars)
    if title is not None:
        if not title.strip():
            raise BadRequest("'title' must not be empty")
        changes["title"] = title.strip()
    model = optional_string(body, "model", max_chars=200)
    if model is not None:
        if not services.catalog.can_serve(model):
            raise BadRequest(f"model '{model}' is not served here; see GET /api/models")
        changes["model"] = model
    system_prompt = optional_string(body, "system_prompt", max_chars=limits.max_system_prompt_chars)
    if system_prompt is not None:
        changes["system_prompt"] = system_prompt
    api_key = optional_string(body, "api_key", max_chars=limits.max_api_key_chars)
    if api_key is not None:
        changes["api_key"] = api_key.strip()  # "" removes the conversation's own key
    if "params" in body:
        parse_params(body["params"])  # checked before anything is read: a bad one is a 400
    elif not changes:
        raise BadRequest(f"nothing to update: send any of {', '.join(sorted(UPDATABLE))}")
    conversation = await services.conversations.get_owned(conversation_id, caller.user.id)
    if "params" in body:
        changes["params"] = dump_params(parse_params(body["params"], load_params(conversation.params)))
    updated = await services.conversations.update(conversation, **changes)
    if "title" in changes:  # open pages show it; it also comes after any automatic title
        with contextlib.suppress(BrokerUnavailable):
            await services.broker.publish(conversation_id, TITLE, updated.title)
    return JSONResponse(conversation_json(updated))


@operation("A conversation and its messages", {"200": json_response(ref("History"), "history")}, params=True)
async def history(request: Request) -> JSONResponse:
    """The active branch, each message with its parent and its siblings' ids."""
    caller = await require_caller(request)
    conversation_id = path_id(request)
    store = services_of(request).conversations
    return await history_response(store, await store.get_owned(conversation_id, caller.user.id))


async def history_response(store: ConversationStore, conversation: Conversation) -> JSONResponse:
    return JSONResponse(
        {
            "conversation_id": conversation.id,
            "title": conversation.title,
            "model": conversation.model,
            "messages": await store.messages.history(conversation),
            "created_time": conversation.created_time,
            "params": load_params(conversation.params),
        }
    )


@operation("Delete a conversation", {"200": json_response(ref("Message"), "deleted")}, params=True)
async def delete(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    conversation_id = path_id(request)
    services = services_of(request)
    await services.conversations.delete_owned(conversation_id, caller.user.id)
    # Its streams end ("deleted") and its buffered events go. A generation still running is
    # stopped (it finds the conversation gone and saves nothing) and given a moment to end;
    # what it published meanwhile is dropped too. The delete itself has succeeded in SQL: a
    # broker outage must not turn it into an error (its Redis keys expire on their own).
    with contextlib.suppress(BrokerUnavailable):
        await services.broker.drop(conversation_id)
        if await services.locks.request_stop(conversation_id):
            await wait_for_lock_release(services, conversation_id, STOP_PATIENCE_SECONDS)
            await services.broker.drop(conversation_id)
    return JSONResponse({"message": "Conversation deleted successfully"})


STOP_PATIENCE_SECONDS = 3.0


async def wait_for_lock_release(services: Services, conversation_id: int, patience: float) -> None:
    deadline = time.monotonic() + patience
    while await services.locks.holder(conversation_id) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@operation("The whole conversation as a download",
           {"200": {"description": "JSON or Markdown",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/markdown": {"schema": {"type": "string"}}}}},
           params=True, query=({"name": "format", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["json", "markdown"]}},))
async def export(request: Request) -> Response:
    """The whole conversation as a download: `?format=json` (default: every message of
    every branch, with its parent) or `markdown` (the active branch)."""
    caller = await require_caller(request)
    services = services_of(request)
    conversation_id = path_id(request)
    kind = request.query_params.get("format", "json")
    if kind not in ("json", "markdown"):
        raise BadRequest("'format' must be 'json' or 'markdown'")
    conversation = await services.conversations.get_owned(conversation_id, caller.user.id)
    messages = await services.conversations.messages.every(conversation.id)
    filename = f"conversation-{conversation.id}.{'md' if kind == 'markdown' else 'json'}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if kind == "markdown":
        return Response(render_markdown(conversation, messages), media_type="text/markdown; charset=utf-8",
                        headers=headers)
    document = {
        **conversation_json(conversation),
        "system_prompt": conversation.system_prompt,
        "messages": [exported_json(m) for m in messages],
        "active_leaf_id": conversation.active_leaf_id or None,
        "usage": totals(messages),
        "exported_time": int(time.time()),
    }
    return JSONResponse(document, headers=headers)


def exported_json(message: Message) -> dict[str, object]:
    """As history shows it, each attachment with where to download it."""
    shown = message_json(message)
    if message.attachments:
        shown["attachments"] = [{**f.json(), "path": f"/api/files/{f.file_id}"} for f in message.attachments]
    return shown


def totals(messages: list[Message]) -> dict[str, object]:
    answered = [m.usage for m in messages if m.usage is not None]
    return {
        "prompt_tokens": sum(u.prompt_tokens for u in answered),
        "completion_tokens": sum(u.completion_tokens for u in answered),
        "estimated": any(u.estimated for u in answered),
    }


def render_markdown(conversation: Conversation, messages: list[Message]) -> str:
    """Readable Markdown of the active branch: a heading per turn; message text goes in as written."""
    by_id = {m.message_id: m for m in messages}
    messages = [by_id[m] for m in Tree((m.message_id, m.parent_id) for m in messages).path(
        conversation.active_leaf_id)]
    title = " ".join(conversation.title.split()) or f"Conversation {conversation.id}"
    lines = [f"# {title}", "", f"Model: `{conversation.model}`  ", f"Created: {_when(conversation.created_time)}", ""]
    if conversation.system_prompt:
        lines += ["## System prompt", "", conversation.system_prompt, ""]
    for message in messages:
        heading = {"user": "User", "assistant": "Assistant"}.get(message.role, message.role.title())
        lines += [f"## {heading} · {_when(message.created_time)}", ""]
        if message.reasoning:
            lines += ["<details>", "<summary>Thinking</summary>", "", message.reasoning, "", "</details>", ""]
        lines += [message.content, ""]
        for file in message.attachments:  # the name shown as text: brackets escaped
            name = re.sub(r"([\\\[\]])", r"\\\1", file.name)
            lines += [f"- Attached: [{name}](/api/files/{file.file_id}) ({file.content_type}, {file.size} bytes)"]
        if message.attachments:
            lines += [""]
        if message.usage is not None:
            estimate = " (estimated)" if message.usage.estimated else ""
            lines += [f"*Tokens: {message.usage.prompt_tokens} prompt, "
                      f"{message.usage.completion_tokens} completion{estimate}*", ""]
    return "\n".join(lines)


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))
