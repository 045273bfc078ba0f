"""The OpenAPI document served at /openapi.json: the schemas of bodies and answers (with
this server's configured limits), and every HTTP route with the operation its handler
carries (api/docs.py)."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from realtime_llm import __version__
from realtime_llm.api.access import services_of
from realtime_llm.api.bodyschemas import PARAMS, bounded_schemas
from realtime_llm.api.docs import json_response, operation, operation_of, ref
from realtime_llm.catalog import ModelCatalog
from realtime_llm.config import Settings
from realtime_llm.events import BRANCH, DONE, FULL_RESPONSE, MESSAGE, REASONING, RESYNC, TITLE, TRUNCATE, USER_MESSAGE
from realtime_llm.events import ERROR as ERROR_EVENT
from realtime_llm.responses import JSONResponse

EVENT_TYPES = (USER_MESSAGE, REASONING, MESSAGE, DONE, FULL_RESPONSE, ERROR_EVENT, TITLE, TRUNCATE, BRANCH, RESYNC)

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
        "required": ["user_id", "username", "created_time", "usage", "password_change_required"],
        "properties": {
            "user_id": {"type": "integer"},
            "password_change_required": {"type": "boolean"},
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
