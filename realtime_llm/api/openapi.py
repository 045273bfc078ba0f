"""The OpenAPI document served at /openapi.json, describing every route."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from realtime_llm import __version__


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
        secured: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses}}
    if secured:
        op["security"] = SECURED
        op["responses"]["401"] = ERROR
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
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
    "Credentials": {
        "type": "object",
        "required": ["username", "password"],
        "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
    },
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
    "ConversationUpdate": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1},
            "model": {"type": "string"},
            "api_key": {"type": "string", "description": "empty removes the conversation's own key"},
            "system_prompt": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "NewConversation": {
        "type": "object",
        "properties": {
            "title": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "api_key": {"type": ["string", "null"]},
            "system_prompt": {"type": ["string", "null"]},
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
    "ChatMessage": {
        "type": "object",
        "required": ["message"],
        "properties": {
            "message": {"type": "string", "minLength": 1},
            "edit_message_id": {"type": "integer", "minimum": 1,
                                "description": "replace this user message and drop everything after it"},
        },
    },
    "Stopped": {
        "type": "object",
        "required": ["message", "stopped"],
        "properties": {"message": {"type": "string"}, "stopped": {"type": "boolean"}},
    },
    "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}

PATHS: dict[str, Any] = {
    "/api/users/register": {
        "post": _op("Register a user", {"201": _json(_ref("Message"), "registered")}, body="Credentials",
                    secured=False)
    },
    "/api/users/login": {
        "post": _op("Log in; returns a bearer token",
                    {"200": _json(_ref("Token"), "logged in"), "401": ERROR}, body="Credentials",
                    secured=False)
    },
    "/api/users/me": {"get": _op("The caller", {"200": _json(_ref("Me"), "the caller")})},
    "/api/users/logout": {"post": _op("Revoke the caller's token", {"200": _json(_ref("Message"), "revoked")})},
    "/api/models": {"get": _op("Models this server can serve", {"200": _json(_ref("Models"), "models")})},
    "/api/conversations/create": {
        "post": _op("Create a conversation", {"200": _json(_ref("Conversation"), "created")},
                    body="NewConversation")
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
                 "schema": {"type": "integer", "minimum": 1}},
                {"name": "q", "in": "query", "required": False,
                 "description": "text in titles or messages, case-insensitive, literal",
                 "schema": {"type": "string", "maxLength": 200}},
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
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}},
             "409": ERROR, "502": ERROR},
            body="ChatMessage", params=True,
        )
    },
    "/api/chat/{id}/regenerate": {
        "post": _op(
            "Replace the last answer with a new one; it streams as Server-Sent Events",
            {"200": {"description": "events until full_response or error",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}},
             "409": ERROR, "502": ERROR},
            params=True,
        )
    },
    "/api/chat/{id}/events": {
        "get": {
            **_op("The conversation's events, live; replays after Last-Event-ID first",
                  {"200": {"description": "events, until the client leaves",
                           "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
                  params=True),
            "parameters": [
                ID_PARAM,
                {"name": "last_event_id", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
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


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "realtime-llm", "version": __version__},
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())
