"""Reading and checking JSON request bodies: every bad input becomes a clear 4xx."""
from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
from starlette.requests import Request

from realtime_llm.config import ServerSettings
from realtime_llm.errors import BadRequest, PayloadTooLarge, RequestTimeout

# Bounds the checks below apply, shared with the OpenAPI document (api/openapi.py).
MAX_ID = 2**53 - 1  # ids and event ids: integers a JavaScript number holds exactly
MAX_MESSAGE_ID = 2**31 - 1  # a message id named in a request (edit_message_id)
NO_NUL = "^[^\\x00]*$"  # the pattern of every text field
EVENT_ID_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_ID}


async def read_json_object(request: Request, server: ServerSettings, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object, read no further than `server.max_body_bytes` and for no
    longer than `server.body_timeout_seconds` (a body sent a byte at a time holds nothing)."""
    limit = server.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # ('²'.isdigit() is true)
            raise BadRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(server.body_timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {server.body_timeout_seconds:g} s") from None
    raw = b"".join(chunks)
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("request body must be a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def optional_string(body: dict[str, Any], name: str, *, max_chars: int) -> str | None:
    """The field as a string, or None when it is absent or null."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    if len(value) > max_chars:
        raise BadRequest(f"'{name}' is longer than {max_chars} characters")
    if "\x00" in value:
        raise BadRequest(f"'{name}' must not contain NUL characters")
    return value


def required_string(body: dict[str, Any], name: str, *, max_chars: int) -> str:
    value = optional_string(body, name, max_chars=max_chars)
    if value is None:
        raise BadRequest(f"'{name}' is required")
    return value


def validate_message(content: object, limit: int, name: str = "message") -> str:
    """A chat message: a non-blank string without NUL, at most `limit` characters."""
    if not isinstance(content, str):
        raise BadRequest(f"'{name}' must be a string")
    if len(content) > limit:
        raise PayloadTooLarge(f"'{name}' is longer than {limit} characters")
    if not content.strip():
        raise BadRequest(f"'{name}' must not be empty")
    if "\x00" in content:
        raise BadRequest(f"'{name}' must not contain NUL characters")
    return content


INTEGER = re.compile(r"-?[0-9]{1,19}")


def bounded_int(value: Any, name: str, low: int, high: int) -> int | None:
    """An integer from JSON (a number) or a query string (digits), within [low, high];
    None when absent. Anything else (a fraction, a bool, text, "", out of range) is a 400."""
    if value is None:
        return None
    if isinstance(value, str) and INTEGER.fullmatch(value):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():  # JSON's 3.0 is the integer 3
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}")
    return value


def message_id_of(body: dict[str, Any], name: str = "message_id") -> int:
    """A message id the body must name."""
    value = bounded_int(body.get(name), name, 1, MAX_MESSAGE_ID)
    if value is None:
        raise BadRequest(f"'{name}' is required: the id of a message of this conversation")
    return value


def event_id(value: Any, name: str = "last_event_id") -> int | None:
    """A client's last event id (header, query or JSON): a non-negative integer below
    2**53, or None when absent; anything else ("" too) is a 400."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    raise BadRequest(f"{name} must be a non-negative integer")


def path_id(request: Request, name: str = "id") -> int:
    """An integer id from the path: a non-integer is a 400; one no row can have matches nothing."""
    raw = request.path_params[name]
    digits = raw[1:] if raw.startswith("-") else raw
    if not (digits.isascii() and digits.isdigit()):
        raise BadRequest("conversation id must be an integer")
    if raw.startswith("-") or len(digits) > 16:  # ids are positive and below 2**53
        return -1
    return int(digits)
