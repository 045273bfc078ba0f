"""/v1/models and /v1/chat/completions in OpenAI's own shapes (DESIGN.md, Programmatic and
shared access), so any OpenAI SDK is a client: streamed (chunks, `[DONE]`, usage with
`stream_options.include_usage`) and not, errors as `{"error":{"message","type","code"}}`.

Without a conversation the given messages are relayed to the model; with `conversation_id`
(body) or `X-Conversation-Id` the last user message joins that conversation of the
caller's and is answered as a chat message is: saved, and streamed to the conversation's
other subscribers too. Rate limits and usage count either way.
"""
from __future__ import annotations

import asyncio
import functools
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from realtime_llm.api.access import (
    Caller,
    bearer_token,
    caller_of,
    check_message_rate,
    credentials,
    require_caller,
    services_of,
)
from realtime_llm.api.docs import documented
from realtime_llm.api.streams import generation_events
from realtime_llm.bodies import MAX_ID, bounded_int, read_json_object
from realtime_llm.errors import BadRequest, NotFound, UpstreamError, as_api_error
from realtime_llm.params import parse_params
from realtime_llm.prompt import answer_usage
from realtime_llm.providers import ChatMessage, ChatRequest, Thought
from realtime_llm.responses import EventStreamResponse, JSONResponse, Last
from realtime_llm.services import Services
from realtime_llm.store.conversations import owned
from realtime_llm.store.records import Conversation
from realtime_llm.usage import Usage

ROLES = frozenset({"system", "developer", "user", "assistant"})
FINISH = frozenset({"stop", "length", "content_filter"})
PARAMS = ("temperature", "top_p", "max_tokens", "reasoning_effort")
SSE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ERROR_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers=headers)


def openai_errors(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """The route's errors in OpenAI's shape (a bug is still the server's 500)."""
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            error = as_api_error(exc)
            if error is None:
                raise
            code = "invalid_api_key" if error.status_code == 401 else error.code
            return openai_error(error.status_code, error.message, code, error.headers)
    return wrapped


OPENAI_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["string", "null"]},
                       "param": {"type": ["string", "null"]}}}}}}}}
SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


@documented({"summary": "The models this server serves, in OpenAI's shape", "security": SECURED,
             "responses": {"200": {"description": "models", "content": {"application/json": {"schema": {
                 "type": "object", "required": ["object", "data"]}}}}, "401": OPENAI_ERROR, "503": OPENAI_ERROR}})
@openai_errors
async def models(request: Request) -> Response:
    await require_caller(request)
    listing = services_of(request).catalog.listing()
    return JSONResponse({"object": "list", "data": [
        {"id": entry["id"], "object": "model", "created": 0, "owned_by": entry["provider"]}
        for entry in listing if not entry["pattern"]]})


@dataclass(frozen=True)
class Asked:
    """A chat completion request, checked."""

    model: str
    messages: tuple[ChatMessage, ...]
    stream: bool
    include_usage: bool
    params: dict[str, Any]
    conversation_id: int | None


def conversation_id_of(request: Request, body: dict[str, Any]) -> int | None:
    header = request.headers.get("x-conversation-id")
    return bounded_int(body.get("conversation_id", header), "conversation_id", 1, MAX_ID)


def asked(body: dict[str, Any], services: Services, conversation_id: int | None) -> Asked:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be the name of a model (GET /v1/models)")
    if not services.catalog.can_serve(model):
        raise NotFound(f"the model '{model[:100]}' is not served here (GET /v1/models)")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list of {role, content}")
    messages = tuple(_message(m) for m in raw)
    options = body.get("stream_options") or {}
    if not isinstance(body.get("stream", False), bool) or not isinstance(options, dict):
        raise BadRequest("'stream' must be true or false, 'stream_options' an object")
    given = {name: body[name] for name in PARAMS if body.get(name) is not None}
    if body.get("max_completion_tokens") is not None:
        given["max_tokens"] = body["max_completion_tokens"]
    return Asked(model, messages, bool(body.get("stream")), options.get("include_usage") is True,
                 parse_params(given), conversation_id)


def _message(value: Any) -> ChatMessage:
    if not isinstance(value, dict) or value.get("role") not in ROLES:
        raise BadRequest("each message must be an object with a 'role' of system, developer, user or assistant")
    content = value.get("content")
    if isinstance(content, list):  # content parts: their text (a file goes through POST /api/files)
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise BadRequest("only text content parts are taken here")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str) or "\x00" in content:
        raise BadRequest("a message's 'content' must be text")
    return ChatMessage("system" if value["role"] == "developer" else value["role"], content)


@documented({"summary": "A chat completion in OpenAI's shape (streamed or not); with conversation_id "
                        "(or X-Conversation-Id) it joins that conversation",
             "security": SECURED,
             "requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "type": "object", "required": ["model", "messages"],
                 "properties": {"model": {"type": "string"}, "messages": {"type": "array", "minItems": 1},
                                "stream": {"type": "boolean"},
                                "conversation_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}}}}},
             "responses": {"200": {"description": "the completion, or its chunks", "content": {
                 "application/json": {"schema": {"type": "object"}},
                 "text/event-stream": {"schema": {"type": "string"}}}},
                 **{code: OPENAI_ERROR for code in ("400", "401", "404", "409", "413", "429", "502", "503")}}})
@openai_errors
async def completions(request: Request) -> Response:
    services = services_of(request)
    checked = await credentials(services, bearer_token(request))
    body = await read_json_object(request, services.settings.server)
    # The caller and the conversation in one query, before the body is checked further: a
    # revoked token is a 401 whatever the body says (schemathesis holds us to it).
    conversation_id = conversation_id_of(request, body)
    caller, conversation = await caller_of(services, checked, conversation_id)
    ask = asked(body, services, conversation_id)
    await check_message_rate(services, caller.user.id)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if ask.conversation_id is not None:
        pieces = await _in_conversation(services, caller, ask, conversation)
    else:
        pieces = await _relayed(services, caller, ask)
    if ask.stream:
        return EventStreamResponse(_chunks(completion_id, ask, pieces), headers=SSE)
    return JSONResponse(await _whole(completion_id, ask, pieces))


# An answer as the two modes produce it: ("reasoning" | "content", text), then ("end",
# finish_reason, usage dict or None); ("error", message) instead if it breaks; None: idle.
Piece = tuple[Any, ...] | None


async def _relayed(services: Services, caller: Caller, ask: Asked) -> AsyncIterator[Piece]:
    """The messages straight to the model; the upstream is open (and has accepted) before
    this returns, so a refusal is an HTTP error. Usage goes to the caller's totals."""
    provider = services.engine.provider_for(ask.model)
    request = ChatRequest(ask.model, ask.messages, params=ask.params)

    async def pieces() -> AsyncIterator[Piece]:
        async with provider.stream(request) as completion:
            yield None  # accepted (a refusal raised above)
            text: list[str] = []
            try:
                async for delta in completion:
                    if not isinstance(delta, Thought):
                        text.append(delta)
                    yield ("reasoning" if isinstance(delta, Thought) else "content", str(delta))
            except UpstreamError as exc:
                yield ("error", exc.message)
                return
            usage = answer_usage(completion.usage, ask.messages, "".join(text))
            await services.users.add_usage(caller.user.id, usage)
            finish = completion.finish_reason if completion.finish_reason in FINISH else "stop"
            yield ("end", finish, _usage_json(usage))

    generator = pieces()
    # Started here, so a refusal is an HTTP error, and the upstream request is inside the
    # generator's own `async with`: however the client leaves, closing it closes that.
    await generator.__anext__()
    return generator


async def _in_conversation(services: Services, caller: Caller, ask: Asked,
                           found: Conversation | None) -> AsyncIterator[Piece]:
    """The last user message joins the caller's conversation (`found` as caller_of read
    it) and is answered there, as a chat message is (saved; every subscriber sees it)."""
    last = next((m for m in reversed(ask.messages) if m.role == "user"), None)
    if last is None or not last.content.strip():
        raise BadRequest("with a conversation, the last user message is what is sent: there is none")
    if len(last.content) > services.settings.limits.max_message_chars:
        raise BadRequest(f"a message may be at most {services.settings.limits.max_message_chars} characters")
    conversation = owned(found)
    generation = await services.engine.start(conversation, last.content)
    refusal = await asyncio.shield(generation.accepted)
    if refusal is not None:
        raise UpstreamError(refusal)

    async def pieces() -> AsyncIterator[Piece]:
        finish: str = "stop"
        usage: dict[str, Any] | None = None
        async for event in generation_events(services, caller, conversation.id, generation.after_event_id):
            if event is None:
                yield None
            elif event["event"] in ("message", "reasoning"):
                yield ("content" if event["event"] == "message" else "reasoning", event["data"])
            elif event["event"] == "done":
                finish = str(event["reason"]) if event.get("reason") in FINISH else "stop"
                usage = event.get("usage")
            elif event["event"] == "full_response":
                yield ("end", finish, _usage_json(Usage(**usage)) if usage else None)
            elif event["event"] == "error":
                yield ("error", event["data"])
    return pieces()


def _usage_json(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def _chunk(completion_id: str, model: str, delta: dict[str, Any] | None, finish: str | None = None,
           usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model,
                            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _chunks(completion_id: str, ask: Asked, pieces: AsyncIterator[Piece]) -> AsyncIterator[bytes]:
    """The chunks, each in one write to the socket: the role's goes with the first piece
    (as OpenAI sends it), and the end's, the usage and [DONE] with the response's end."""
    opening = _chunk(completion_id, ask.model, {"role": "assistant", "content": ""})
    async for piece in pieces:
        if piece is None:
            yield opening + b": ping\n\n"
        elif piece[0] == "error":
            error = {"error": {"message": piece[1], "type": "api_error", "code": None}}
            yield Last(opening + b"data: " + orjson.dumps(error) + b"\n\n")
            return
        elif piece[0] == "end":
            end = opening + _chunk(completion_id, ask.model, {}, piece[1])
            if ask.include_usage and piece[2] is not None:
                end += _chunk(completion_id, ask.model, None, usage=piece[2])
            yield Last(end + b"data: [DONE]\n\n")
            return
        else:
            field = "content" if piece[0] == "content" else "reasoning_content"
            yield opening + _chunk(completion_id, ask.model, {field: piece[1]})
        opening = b""
    yield Last(opening)  # (the pieces always end with an end or an error)


async def _whole(completion_id: str, ask: Asked, pieces: AsyncIterator[Piece]) -> dict[str, Any]:
    text: list[str] = []
    thoughts: list[str] = []
    async for piece in pieces:
        if piece is None:
            continue
        if piece[0] == "error":
            raise UpstreamError(piece[1])
        if piece[0] == "end":
            message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
            if thoughts:
                message["reasoning_content"] = "".join(thoughts)
            return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": ask.model,
                    "choices": [{"index": 0, "message": message, "finish_reason": piece[1]}],
                    "usage": piece[2] or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
        (text if piece[0] == "content" else thoughts).append(piece[1])
    raise UpstreamError("the answer ended without finishing")

