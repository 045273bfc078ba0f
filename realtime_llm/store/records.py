"""A conversation and a message, as the store hands them out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from realtime_llm.store.files import StoredFile
from realtime_llm.usage import Usage


@dataclass(frozen=True)
class Conversation:
    id: int
    user_id: int
    title: str
    model: str
    system_prompt: str
    api_key_sealed: str
    api_key_hint: str
    created_time: int
    last_message_id: int = 0
    last_event_id: int = 0
    message_count: int = 0
    params: str = "{}"  # generation settings, a JSON object (params.py reads it)
    active_leaf_id: int = 0  # where the active branch ends (0: no messages yet)


@dataclass(frozen=True, slots=True)
class Message:
    message_id: int
    role: str
    content: str
    created_time: int
    usage: Usage | None = None
    reasoning: str = ""  # an answer's thinking
    parent_id: int = 0  # the message it follows (0: none, it is a first message)
    attachments: tuple[StoredFile, ...] = ()  # a user message's files, in order


def message_from_row(row: Any) -> Message:
    """A Message from a driver row of MESSAGE_COLUMNS."""
    message_id, role, content, created_time, prompt_tokens, completion_tokens, estimated, reasoning, thought, \
        parent_id = row
    usage = None
    if prompt_tokens is not None and completion_tokens is not None:
        usage = Usage(prompt_tokens, completion_tokens, bool(estimated), thought)
    return Message(message_id, role, content, created_time, usage, reasoning, parent_id)
