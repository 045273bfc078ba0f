"""The OpenAPI document served at /openapi.json: the schemas of bodies and answers (with
this server's configured limits), and every HTTP route with the operation its handler
carries (api/docs.py)."""
from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from realtime_llm import __version__
from realtime_llm.api.access import services_of
from realtime_llm.api.docs import json_response, operation, operation_of, ref
from realtime_llm.api.files import FILE_ID_SCHEMA
from realtime_llm.bodies import MAX_ID, MAX_MESSAGE_ID, NO_NUL
from realtime_llm.catalog import ModelCatalog
from realtime_llm.config import Settings
from realtime_llm.events import BRANCH, DONE, FULL_RESPONSE, MESSAGE, REASONING, TITLE, TRUNCATE, USER_MESSAGE
from realtime_llm.events import ERROR as ERROR_EVENT
from realtime_llm.params import EFFORTS, RANGES
from realtime_llm.responses import JSONResponse

EVENT_TYPES = (USER_MESSAGE, REASONING, MESSAGE, DONE, FULL_RESPONSE, ERROR_EVENT, TITLE, TRUNCATE, BRANCH)
# A conversation's generation settings (params.py), as answered and as sent.
PARAM_SCHEMAS: dict[str, Any] = {
    "temperature": {"type": "number", "minimum": RANGES["temperature"][0], "maximum": RANGES["temperature"][1]},
    "top_p": {"type": "number", "minimum": RANGES["top_p"][0], "maximum": RANGES["top_p"][1]},
    "max_tokens": {"type": "integer", "minimum": RANGES["max_tokens"][0], "maximum": RANGES["max_tokens"][1]},
    "reasoning_effort": {"type": "string", "enum": list(EFFORTS)},
}
PARAMS = {"type": "object", "properties": PARAM_SCHEMAS, "additionalProperties": False}
# As sent: a null leaves a setting unset (create) or clears it (update).
PARAMS_NULLABLE = {**PARAMS, "properties": {name: {"anyOf": [schema, {"type": "null"}]}
                                          for name, schema in PARAM_SCHEMAS.items()}}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
    },
    "Message": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
    "Token": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
    "Share": {"type": "object", "required": ["share_id", "url"],
              "properties": {"share_id": {"type": "string"}, "url": {"type": "string"}}},
    "Ticket": {"type": "object", "required": ["ticket", "expires_in"],
               "properties": {"ticket": {"type": "string"}, "expires_in": {"type": "integer"}}},
    "ApiToken": {
        "type": "object",
        "required": ["token_id", "name", "created_time", "expires_time"],
        "properties": {"token_id": {"type": "string"}, "name": {"type": "string"},
                       "created_time": {"type": "integer"}, "expires_time": {"type": ["integer", "null"]}},
    },
    "NewApiToken": {
        "type": "object",
        "required": ["token_id", "name", "token", "created_time", "expires_time"],
        "properties": {"token_id": {"type": "string"}, "name": {"type": "string"},
                       "token": {"type": "string", "pattern": "^rtllm_", "description": "shown this once"},
                       "created_time": {"type": "integer"}, "expires_time": {"type": ["integer", "null"]}},
    },
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
            "reasoning_tokens": {"type": "integer", "description": "of completion_tokens, where the model says"},
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
            "params": PARAMS,
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
            "params": PARAMS,
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
                        "usage": ref("Usage"),
                        "reasoning": {"type": "string", "description": "an answer's thinking; \"\" when none"},
                        "parent_id": {"type": ["integer", "null"], "description": "null: a first message"},
                        "attachments": {"type": "array", "description": "a user message's files", "items": {
                            "type": "object", "required": ["file_id", "name", "content_type", "size"],
                            "properties": {"file_id": {"type": "string"}, "name": {"type": "string"},
                                           "content_type": {"type": "string"}, "size": {"type": "integer"}}}},
                        "sibling_ids": {"type": "array", "items": {"type": "integer"},
                                        "description": "its versions: its parent's children, itself included, "
                                                       "oldest first"},
                    },
                },
            },
        },
    },
    "File": {
        "type": "object",
        "required": ["file_id", "name", "content_type", "size", "created_time"],
        "properties": {"file_id": {"type": "string"}, "name": {"type": "string"}, "content_type": {"type": "string"},
                       "size": {"type": "integer"}, "created_time": {"type": "integer"}},
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
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": ref("Event")},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
        },
    },
}

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
                "params": {**PARAMS_NULLABLE, "type": ["object", "null"]},
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
                "params": PARAMS_NULLABLE,
            },
            "additionalProperties": False,
            "minProperties": 1,
        },
        "ChatMessage": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": _text(limits.max_message_chars, pattern=NON_BLANK, min_chars=1),
                "edit_message_id": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_MESSAGE_ID,
                                    "description": "a new version of this user message: its sibling, on a "
                                                   "branch of its own"},
                "attachments": {"type": ["array", "null"], "maxItems": limits.attachments_per_message,
                                "uniqueItems": True, "items": FILE_ID_SCHEMA,
                                "description": "ids of the caller's files (POST /api/files)"},
            },
        },
        "TicketRequest": {
            "type": "object",
            "required": ["conversation_id"],
            "properties": {"conversation_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
        },
        "ApiTokenRequest": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": 100, "pattern": NON_BLANK},
                           "expires_in_days": {"type": ["integer", "null"], "minimum": 1, "maximum": 3650}},
        },
        "PasswordChange": {
            "type": "object",
            "required": ["old_password", "new_password"],
            "properties": {"old_password": _text(auth.max_password_length, min_chars=1),
                           "new_password": _text(auth.max_password_length, min_chars=auth.min_password_length)},
        },
        "MessageChoice": {
            "type": "object",
            "required": ["message_id"],
            "properties": {"message_id": {"type": "integer", "minimum": 1, "maximum": MAX_MESSAGE_ID}},
        },
    }


def paths(routes: list[BaseRoute]) -> dict[str, Any]:
    """Every HTTP route of the app, with the operation its endpoint carries (api/docs.py)."""
    found: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue  # the WebSocket (DESIGN.md describes it) and the static files
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op = operation_of(route.endpoint, method)
            if op is None:
                raise RuntimeError(f"{method} {route.path} has no @operation: document it beside its handler")
            found.setdefault(route.path, {})[method.lower()] = op
    return found


def openapi_document(settings: Settings, catalog: ModelCatalog, routes: list[BaseRoute]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "realtime-llm", "version": __version__},
        "paths": paths(routes),
        "components": {
            "schemas": {**SCHEMAS, **bounded_schemas(settings, catalog)},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


@operation("This document", {"200": json_response({"type": "object"}, "the OpenAPI document")}, secured=False)
async def openapi(request: Request) -> JSONResponse:
    services = services_of(request)
    return JSONResponse(openapi_document(services.settings, services.catalog, request.app.routes))
