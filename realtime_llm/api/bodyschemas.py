"""The request bodies of the OpenAPI document, with this server's configured limits (and
the models it serves), so that a schema-valid body is one the server accepts."""
from __future__ import annotations

import re
from typing import Any

from realtime_llm.api.files import FILE_ID_SCHEMA
from realtime_llm.bodies import MAX_ID, MAX_MESSAGE_ID, NO_NUL
from realtime_llm.catalog import ModelCatalog
from realtime_llm.config import Settings
from realtime_llm.params import EFFORTS, RANGES

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
