"""What an import hands the writer: conversations with their message trees, as plain data
(the ChatGPT reader's process builds them too, so this module imports nothing heavy)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class ImportedMessage:
    message_id: int  # from 1; a child's is above its parent's, siblings oldest first
    parent_id: int  # 0: a first message
    role: str  # "user" or "assistant"
    content: str
    created_time: int


@dataclass(frozen=True)
class ImportedConversation:
    title: str
    created_time: int
    messages: Sequence[ImportedMessage]
    active_leaf_id: int  # a message without children; 0 when there are none
    model: str
    id: int | None = None  # kept (the original's), or None for a new one
    system_prompt: str = ""
    api_key: str = ""


UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # in a str, any surrogate is a lone one


def storable(text: str) -> str:
    """Text every database holds: no NUL (PostgreSQL refuses it), no lone surrogate (not
    UTF-8), each replaced by U+FFFD, as imported data may well carry them."""
    return UNSTORABLE.sub("\ufffd", text)


def unix_time(value: Any) -> float | None:
    """A number that is a Unix time after 1970 (seconds, as both sources write them), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 < value < 2**53 else None
