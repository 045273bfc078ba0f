"""A ChatGPT data export: `conversations.json` (an array of conversations), or the export's
`.zip` holding it, read a conversation at a time (ijson's C tokenizer; objects built here,
no deeper than MAX_DEPTH, each conversation at most MAX_CONVERSATION_BYTES), never whole.

Each conversation's `mapping` is a tree of nodes (parent, children, message); the user's
and the assistant's text become messages, with their branches, and the export's
`current_node` marks the active one. Tool calls and their output, system and hidden
messages and empty nodes are left out: what followed them follows the nearest message
kept above. An answer split by a tool call (assistant, tool, assistant) is one answer
again; a question of images alone is kept as "[image]". Siblings are ordered by time.
Blocking: chatgpt_process.py runs it in a process of its own.
"""
from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from typing import IO, Any, Iterator

import ijson

from realtime_llm.importers.records import ImportedConversation, ImportedMessage, storable, unix_time

ZIP_MAGIC = b"PK\x03\x04"
BOM = b"\xef\xbb\xbf"
MEMBER = "conversations.json"
TEXT_TYPES = ("text", "multimodal_text")
MAX_DEPTH = 64  # an export nests about 10 deep; ijson's own item builder costs depth squared
MAX_CONVERSATION_BYTES = 16 * 1024 * 1024
IMAGE = "[image]"


class MalformedExport(ValueError):
    pass


class ExportTooLarge(ValueError):
    pass


@dataclass(frozen=True)
class Reading:
    model: str  # what the conversations will use: the server's default model
    max_title_chars: int
    max_unzipped_bytes: int  # of conversations.json inside a .zip
    max_conversations: int


def conversations_in(file: IO[bytes], reading: Reading) -> Iterator[ImportedConversation]:
    """Each conversation of the export in `file` (seekable), in the export's order; the
    conversations without a message kept are left out."""
    file.seek(0)
    if file.read(4) != ZIP_MAGIC:
        file.seek(0)
        yield from _from_json(_Counted(file, None), reading)
        return
    file.seek(0)
    archive = zipfile.ZipFile(file)
    members = [m for m in archive.infolist() if m.filename.rsplit("/", 1)[-1] == MEMBER and not m.is_dir()]
    if len(members) != 1:
        raise MalformedExport(f"the .zip must hold one {MEMBER} (a ChatGPT data export)")
    if members[0].compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise MalformedExport(f"{MEMBER} is packed in a way ChatGPT's exports are not")
    with archive.open(members[0]) as member:
        yield from _from_json(_Counted(member, reading.max_unzipped_bytes), reading)


class _Counted:
    """A file read with the bytes counted, and refused past `limit` (what a zip's member
    unpacks to may be far more than it took)."""

    def __init__(self, file: IO[bytes], limit: int | None) -> None:
        self.file = file
        self.limit = limit
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.file.read(size)
        self.count += len(chunk)
        if self.limit is not None and self.count > self.limit:
            raise ExportTooLarge(f"{MEMBER} unpacks to more than {self.limit} bytes")
        if self.count == len(chunk) and chunk.startswith(BOM):  # a byte order mark ahead of it all
            return chunk[len(BOM):]
        return chunk


def _from_json(file: _Counted, reading: Reading) -> Iterator[ImportedConversation]:
    events = ijson.basic_parse(file, use_float=True)
    if next(events, (None, None))[0] != "start_array":
        raise MalformedExport(f"{MEMBER} must be a JSON array of conversations")
    depth, n, builder, start = 1, 0, None, 0
    for event, value in events:
        if event in ("start_map", "start_array"):
            depth += 1
            if depth > MAX_DEPTH:
                raise MalformedExport(f"{MEMBER} nests deeper than {MAX_DEPTH}")
        elif event in ("end_map", "end_array"):
            depth -= 1
            if depth == 0:
                if next(events, None) is not None:  # (ijson stops at the end of the array)
                    raise MalformedExport(f"{MEMBER} goes on after its array")
                return
        if builder is None:
            builder, start = ijson.ObjectBuilder(), file.count
        builder.event(event, value)
        if depth == 1:
            n += 1
            if n > reading.max_conversations:
                raise ExportTooLarge(f"an import may hold at most {reading.max_conversations} conversations")
            imported = conversation(builder.value, n, reading)
            builder = None
            if imported.messages:
                yield imported
        elif file.count - start > MAX_CONVERSATION_BYTES:
            raise ExportTooLarge(f"conversation {n + 1} is larger than {MAX_CONVERSATION_BYTES} bytes")
    raise MalformedExport(f"{MEMBER} is cut short")


ROOT = None  # above a first message: no key of the mapping (a key may be "")


def conversation(item: Any, n: int, reading: Reading) -> ImportedConversation:
    """One conversation of the export as a message tree; MalformedExport says what is wrong."""
    if not isinstance(item, dict) or not isinstance(item.get("mapping"), dict):
        raise MalformedExport(f"conversation {n} has no 'mapping' object")
    nodes: dict[str, Any] = item["mapping"]
    if not all(isinstance(node, dict) for node in nodes.values()):
        raise MalformedExport(f"conversation {n}: a node of its mapping is not an object")
    created = seconds(item.get("create_time"))
    title = storable(item["title"][:reading.max_title_chars]) if isinstance(item.get("title"), str) else ""
    texts = {key: text for key, node in nodes.items() if (text := _text(node.get("message"))) is not None}
    above = _kept_above(nodes, set(texts), n)
    children: dict[str | None, list[str]] = {}
    for key in nodes:  # in the export's order, then by time: children oldest first
        if key in texts:
            children.setdefault(above[key], []).append(key)
    for siblings in children.values():
        siblings.sort(key=lambda key: _time_order(nodes[key]["message"]))
    roles = {key: nodes[key]["message"]["author"]["role"] for key in texts}
    ids: dict[str, int] = {}
    rows: list[list[Any]] = []  # [message_id, parent_id, role, text, created_time]
    stack = list(reversed(children.get(ROOT, [])))
    while stack:  # depth first: a parent before its children, siblings in their order
        key = stack.pop()
        parent = above[key]
        if parent is not None and roles[parent] == roles[key] == "assistant" and children[parent] == [key]:
            ids[key] = ids[parent]  # one answer, split by a tool call: one message
            rows[ids[key] - 1][3] += "\n\n" + texts[key]
        else:
            ids[key] = len(rows) + 1
            when = seconds(nodes[key]["message"].get("create_time")) or created
            rows.append([ids[key], ids[parent] if parent is not None else 0, roles[key], texts[key], when])
        stack.extend(reversed(children.get(key, [])))
    current = item.get("current_node")
    leaf = ROOT
    if isinstance(current, str) and current in nodes:
        leaf = current if current in texts else above[current]
    if leaf is None and children.get(ROOT):
        leaf = children[ROOT][-1]
    while leaf is not None and children.get(leaf):  # the active branch ends at a message without children
        leaf = children[leaf][-1]
    created = created or next((row[4] for row in rows if row[4]), None) or int(time.time())
    return ImportedConversation(
        title=title, created_time=created, active_leaf_id=ids[leaf] if leaf is not None else 0, model=reading.model,
        messages=[ImportedMessage(m, p, role, storable(text), t or created) for m, p, role, text, t in rows])


def _text(message: Any) -> str | None:
    """The text of a message kept: the user's or the assistant's own words, not a tool call
    or its output, a system or hidden message, nor an empty one."""
    if not isinstance(message, dict):
        return None
    author, content, metadata = message.get("author"), message.get("content"), message.get("metadata")
    if not isinstance(author, dict) or author.get("role") not in ("user", "assistant"):
        return None
    if message.get("recipient", "all") != "all":  # the assistant calling a tool
        return None
    if isinstance(metadata, dict) and metadata.get("is_visually_hidden_from_conversation"):
        return None
    if not isinstance(content, dict) or content.get("content_type") not in TEXT_TYPES:
        return None
    parts = content.get("parts")
    if not isinstance(parts, list):
        return None
    text = "\n\n".join(part for part in parts if isinstance(part, str) and part)
    if not text.strip():  # images' parts are objects: a question of images alone says so
        return IMAGE if author["role"] == "user" and any(isinstance(p, dict) for p in parts) else None
    return text


def _kept_above(nodes: dict[str, Any], kept: set[str], n: int) -> dict[str, str | None]:
    """For every node, the nearest kept node strictly above it (ROOT when none): one walk up
    per chain, remembered, so a long conversation costs its length, not its length squared."""
    above: dict[str, str | None] = {}
    for start in nodes:
        chain: list[str] = []
        on_chain: set[str] = set()
        key = start
        while key not in above:
            chain.append(key)
            on_chain.add(key)
            parent = nodes[key].get("parent")
            if not isinstance(parent, str) or parent not in nodes:
                above[key] = ROOT
                break
            if parent in on_chain:
                raise MalformedExport(f"conversation {n}: its mapping has a cycle")
            key = parent
        for below in reversed(chain):  # from the top of the chain down
            if below not in above:
                parent = nodes[below]["parent"]
                above[below] = parent if parent in kept else above[parent]
    return above


def seconds(value: Any) -> int | None:
    """Unix seconds from a number of them, else None."""
    time = unix_time(value)
    return None if time is None else int(time)


def _time_order(message: dict[str, Any]) -> tuple[bool, float]:
    """Oldest first, those without a time last (the sort is stable: then the export's order)."""
    time = unix_time(message.get("create_time"))
    return (time is None, time or 0.0)
