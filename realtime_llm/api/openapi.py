"""The OpenAPI document served at /openapi.json, describing every route."""
from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request

from realtime_llm import __version__
from realtime_llm.api.access import services_of
from realtime_llm.catalog import ModelCatalog
from realtime_llm.config import Settings
from realtime_llm.events import DONE, FULL_RESPONSE, MESSAGE, TITLE, TRUNCATE, USER_MESSAGE
from realtime_llm.events import ERROR as ERROR_EVENT
from realtime_llm.responses import JSONResponse

EVENT_TYPES = (USER_MESSAGE, MESSAGE, DONE, FULL_RESPONSE, ERROR_EVENT, TITLE, TRUNCATE)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "error")
ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
}
SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def _op(summary: str, responses: dict[str, Any], *, body: str | None = None, params: bool = False,
        secured: bool = True, body_required: bool = True, limited: bool = False) -> dict[str, Any]:
    """An operation; `limited`: it may answer 429 (rate limits). Any operation may answer
    503 (the database busy or unreachable, the server shutting down)."""
    op: dict[str, Any] = {"summary": summary, "responses": {"503": ERROR, **responses}}
    if secured:
        op["security"] = SECURED
        op["responses"]["401"] = ERROR
    if limited:
        op["responses"]["429"] = ERROR
    if body:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": _ref(body)}}}
        op["responses"]["400"] = ERROR
        op["responses"]["413"] = ERROR
    if params:
        op["parameters"] = [ID_PARAM]
        op["responses"]["400"] = ERROR
        op["responses"]["404"] = ERROR
    return op


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
    },
    "Message": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
    "Token": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
    "Me": {
        "type": "object",
        "required": ["user_id", "username", "created_time", "usage"],
        "properties": {
            "user_id": {"type": "integer"},
            "username": {"type": "string"},
            "created_time": {"type": "integer"},
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "completion_tokens"],
                "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}},
            },
        },
    },
    "Usage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "estimated"],
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "estimated": {"type": "boolean", "description": "true: counted by us, not the model"},
        },
    },
    "Conversation": {
        "type": "object",
        "required": ["conversation_id", "title", "model", "api_key", "created_time"],
        "properties": {
            "conversation_id": {"type": "integer"},
            "title": {"type": "string"},
            "model": {"type": "string"},
            "api_key": {"type": "string", "description": "masked, e.g. sk-…7f3a, or empty"},
            "created_time": {"type": "integer"},
        },
    },
    "ConversationSummary": {
        "type": "object",
        "required": ["conversation_id", "title", "created_time"],
        "properties": {
            "conversation_id": {"type": "integer"},
            "title": {"type": "string"},
            "created_time": {"type": "integer"},
        },
    },
    "History": {
        "type": "object",
        "required": ["conversation_id", "title", "model", "messages", "created_time"],
        "properties": {
            "conversation_id": {"type": "integer"},
            "title": {"type": "string"},
            "model": {"type": "string"},
            "created_time": {"type": "integer"},
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["role", "content", "message_id"],
                    "properties": {
                        "role": {"type": "string", "enum": ["user", "assistant"]},
                        "content": {"type": "string"},
                        "message_id": {"type": "integer"},
                        "created_time": {"type": "integer"},
                        "usage": _ref("Usage"),
                    },
                },
            },
        },
    },
    "Models": {
        "type": "object",
        "required": ["default", "models"],
        "properties": {
            "default": {"type": "string"},
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "provider", "kind", "pattern"],
                    "properties": {
                        "id": {"type": "string"},
                        "provider": {"type": "string"},
                        "kind": {"type": "string"},
                        "pattern": {"type": "boolean"},
                    },
                },
            },
        },
    },
    "Stopped": {
        "type": "object",
        "required": ["message", "stopped"],
        "properties": {"message": {"type": "string"}, "stopped": {"type": "boolean"}},
    },
    "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Event": {
        "type": "object",
        "required": ["event", "data", "id"],
        "properties": {
            "event": {"type": "string", "enum": list(EVENT_TYPES)},
            "data": {"type": "string"},
            "id": {"type": "integer", "minimum": 1},
            "conversation_id": {"type": "integer"},
        },
        "description": "one event of a conversation; more metadata keys by type (DESIGN.md)",
    },
    "SSEEvent": {
        "type": "object",
        "required": ["event", "data", "id"],
        "properties": {
            "event": {"type": "string", "enum": list(EVENT_TYPES)},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref("Event")},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
        },
    },
}

NO_NUL = "^[^\\x00]*$"
# Blank as the server judges it, str.strip(): Python's whitespace, which differs from a
# regex's \s (it has U+001C..U+001F and U+0085; \s has U+FEFF). Found by schemathesis.
PYTHON_SPACE = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x3001)) if c.isspace())
NON_BLANK = f"^[^\\x00]*[^\\x00{PYTHON_SPACE}][^\\x00]*$"


def _text(max_chars: int, *, nullable: bool = False, pattern: str = NO_NUL, min_chars: int = 0) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"] if nullable else "string", "maxLength": max_chars,
                              "pattern": pattern}
    if min_chars:
        schema["minLength"] = min_chars
    return schema


def model_pattern(catalog: ModelCatalog, *, allow_empty: bool = False) -> str:
    """The models served here as one regular expression (config's glob patterns)."""
    def glob(pattern: str) -> str:
        return "".join({"*": "[^\\x00]*", "?": "[^\\x00]"}.get(c, re.escape(c)) for c in pattern)
    if any("[" in str(e["id"]) for e in catalog.listing()):
        return NO_NUL  # character classes: not worth translating; the server still checks
    choices = [glob(str(entry["id"])) for entry in catalog.listing()] + ([""] if allow_empty else [])
    return "^(?:" + "|".join(choices) + ")$"


def bounded_schemas(settings: Settings, catalog: ModelCatalog) -> dict[str, Any]:
    """The request bodies, with this server's configured limits."""
    auth, limits = settings.auth, settings.limits
    title = _text(limits.max_title_chars, pattern=NON_BLANK, min_chars=1)
    return {
        "Credentials": {
            "type": "object",
            "required": ["username", "password"],
            "properties": {"username": _text(auth.max_username_length, min_chars=1),
                           "password": _text(auth.max_password_length, min_chars=1)},
        },
        "Registration": {
            "type": "object",
            "required": ["username", "password"],
            "properties": {"username": _text(auth.max_username_length, pattern="^[A-Za-z0-9_.@-]+$"),
                           "password": _text(auth.max_password_length, min_chars=auth.min_password_length)},
        },
        "NewConversation": {
            "type": "object",
            "properties": {
                "title": {**title, "type": ["string", "null"]},
                "model": _text(200, nullable=True, pattern=model_pattern(catalog, allow_empty=True)),
                "api_key": _text(limits.max_api_key_chars, nullable=True),
                "system_prompt": _text(limits.max_system_prompt_chars, nullable=True),
            },
        },
        "ConversationUpdate": {
            "type": "object",
            "properties": {
                "title": title,
                "model": _text(200, pattern=model_pattern(catalog)),
                "api_key": {**_text(limits.max_api_key_chars),
                            "description": "empty removes the conversation's own key"},
                "system_prompt": _text(limits.max_system_prompt_chars),
            },
            "additionalProperties": False,
            "minProperties": 1,
        },
        "ChatMessage": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": _text(limits.max_message_chars, pattern=NON_BLANK, min_chars=1),
                "edit_message_id": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**31 - 1,
                                    "description": "replace this user message and drop everything after it"},
            },
        },
    }


PATHS: dict[str, Any] = {
    "/api/users/register": {
        "post": _op("Register a user", {"201": _json(_ref("Message"), "registered")}, body="Registration",
                    secured=False, limited=True)
    },
    "/api/users/login": {
        "post": _op("Log in; returns a bearer token",
                    {"200": _json(_ref("Token"), "logged in"), "401": ERROR}, body="Credentials",
                    secured=False, limited=True)
    },
    "/api/users/me": {"get": _op("The caller", {"200": _json(_ref("Me"), "the caller")})},
    "/api/users/logout": {"post": _op("Revoke the caller's token", {"200": _json(_ref("Message"), "revoked")})},
    "/api/models": {"get": _op("Models this server can serve", {"200": _json(_ref("Models"), "models")})},
    "/api/conversations/create": {
        "post": _op("Create a conversation", {"200": _json(_ref("Conversation"), "created")},
                    body="NewConversation", body_required=False)
    },
    "/api/conversations/list": {
        "get": {
            **_op("The caller's conversations, newest first; paged and searched",
                  {"200": _json({"type": "array", "items": _ref("ConversationSummary")}, "list"), "400": ERROR}),
            "parameters": [
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "before", "in": "query", "required": False,
                 "description": "continue after this conversation id (the last one seen)",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 2**53}},
                {"name": "q", "in": "query", "required": False,
                 "description": "text in titles or messages, case-insensitive, literal",
                 "schema": _text(200)},
            ],
        }
    },
    "/api/conversations/update/{id}": {
        "post": _op("Change title, model, system prompt or API key", {"200": _json(_ref("Conversation"), "updated")},
                    body="ConversationUpdate", params=True)
    },
    "/api/conversations/export/{id}": {
        "get": {
            **_op("The whole conversation as a download",
                  {"200": {"description": "JSON or Markdown",
                           "content": {"application/json": {"schema": {"type": "object"}},
                                       "text/markdown": {"schema": {"type": "string"}}}}},
                  params=True),
            "parameters": [
                ID_PARAM,
                {"name": "format", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["json", "markdown"]}},
            ],
        }
    },
    "/api/conversations/history/{id}": {
        "get": _op("A conversation and its messages", {"200": _json(_ref("History"), "history")}, params=True)
    },
    "/api/conversations/del/{id}": {
        "post": _op("Delete a conversation", {"200": _json(_ref("Message"), "deleted")}, params=True)
    },
    "/api/chat/{id}": {
        "post": _op(
            "Send a message; the answer streams as Server-Sent Events",
            {"200": {"description": "events until full_response or error",
                     "content": {"text/event-stream": {"schema": _ref("SSEEvent")}}},
             "409": ERROR, "502": ERROR},
            body="ChatMessage", params=True, limited=True,
        )
    },
    "/api/chat/{id}/regenerate": {
        "post": _op(
            "Replace the last answer with a new one; it streams as Server-Sent Events",
            {"200": {"description": "events until full_response or error",
                     "content": {"text/event-stream": {"schema": _ref("SSEEvent")}}},
             "409": ERROR, "502": ERROR},
            params=True, limited=True,
        )
    },
    "/api/chat/{id}/events": {
        "get": {
            **_op("The conversation's events, live; replays after Last-Event-ID first",
                  {"200": {"description": "events, until the client leaves",
                           "content": {"text/event-stream": {"schema": _ref("SSEEvent")}}}},
                  params=True),
            "parameters": [
                ID_PARAM,
                {"name": "last_event_id", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}},
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}},
            ],
        }
    },
    "/api/chat/{id}/stop": {
        "post": _op("Stop the running generation (the partial answer is saved)",
                    {"200": _json(_ref("Stopped"), "stop requested")}, params=True)
    },
    "/": {
        "get": {"summary": "The chat page", "responses": {"200": {"description": "HTML",
                "content": {"text/html": {"schema": {"type": "string"}}}}}}
    },
    "/openapi.json": {
        "get": _op("This document", {"200": _json({"type": "object"}, "the OpenAPI document")}, secured=False)
    },
    "/healthz": {"get": _op("Process is up", {"200": _json(_ref("Status"), "up")}, secured=False)},
    "/readyz": {
        "get": _op("Database and broker reachable, and not draining for shutdown",
                   {"200": _json(_ref("Status"), "ready"),
                    "503": _json(_ref("Status"), "not ready, or draining")}, secured=False)
    },
    "/metrics": {
        "get": {"summary": "Prometheus metrics (all worker processes)", "responses": {"200": {
            "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}
    },
}


def openapi_document(settings: Settings, catalog: ModelCatalog) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "realtime-llm", "version": __version__},
        "paths": PATHS,
        "components": {
            "schemas": {**SCHEMAS, **bounded_schemas(settings, catalog)},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


async def openapi(request: Request) -> JSONResponse:
    services = services_of(request)
    return JSONResponse(openapi_document(services.settings, services.catalog))
