"""Messages as the history route and the export show them (DESIGN.md, Branches)."""
from __future__ import annotations

from typing import Any, Sequence

from realtime_llm.store.files import StoredFile
from realtime_llm.store.records import Message
from realtime_llm.store.tree import Tree


def message_json(message: Message, sibling_ids: list[int] | None = None) -> dict[str, object]:
    """One message; with `sibling_ids` as history shows it, without as the export does."""
    shown: dict[str, object] = {
        "role": message.role,
        "content": message.content,
        "message_id": message.message_id,
        "created_time": message.created_time,
        "parent_id": message.parent_id or None,
    }
    if sibling_ids is not None:
        shown["sibling_ids"] = sibling_ids
    if message.usage is not None:
        shown["usage"] = message.usage.as_json()
    if message.role == "assistant":
        shown["reasoning"] = message.reasoning
    else:
        shown["attachments"] = [f.json() for f in message.attachments]
    return shown


def row_json(row: Sequence[Any], sibling_ids: list[int], attachments: Sequence[StoredFile] = ()) -> dict[str, object]:
    """message_json() straight from a driver row of MESSAGE_COLUMNS: the history of a long
    conversation skips building a Message per row (22 ms of 10,000, bench.history)."""
    message_id, role, content, created_time, prompt_tokens, completion_tokens, estimated, reasoning, thought, \
        parent_id = row
    shown: dict[str, object] = {"role": role, "content": content, "message_id": message_id,
                                "created_time": created_time, "parent_id": parent_id or None,
                                "sibling_ids": sibling_ids}
    if prompt_tokens is not None and completion_tokens is not None:
        usage: dict[str, object] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                    "estimated": bool(estimated)}
        if thought is not None:
            usage["reasoning_tokens"] = thought
        shown["usage"] = usage
    if role == "assistant":
        shown["reasoning"] = reasoning
    else:
        shown["attachments"] = [f.json() for f in attachments]
    return shown


def branch_json(rows: Sequence[Sequence[Any]], leaf: int,
                carried: dict[int, list[StoredFile]]) -> list[dict[str, object]]:
    """The branch ending at `leaf`, in order, from the rows of every message (in id order)
    and the files they carry."""
    tree = Tree((row[0], row[9]) for row in rows)
    by_id = {row[0]: row for row in rows}
    return [row_json(by_id[m], tree.siblings(m), carried.get(m, ())) for m in tree.path(leaf)]
