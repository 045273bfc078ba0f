"""A ChatGPT data export: `conversations.json` (an array of conversations), or the export's
`.zip` holding it, read a conversation at a time (ijson, its C parser) off the spooled
upload, never whole. Each conversation's `mapping` is a tree of nodes (parent, children,
message); the user's and the assistant's text become messages, with their branches, and
the export's `current_node` marks the active one. Tool calls and their output, system and
hidden messages and empty nodes are left out: their children follow the nearest message
kept above them. Blocking (file reads and parsing): run it on a worker thread."""
from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from typing import IO, Any, Generator, Iterator

import ijson

from realtime_llm.importers.writer import ImportedConversation, ImportedMessage

ZIP_MAGIC = b"PK\x03\x04"
MEMBER = "conversations.json"
TEXT_TYPES = ("text", "multimodal_text")


class MalformedExport(ValueError):
    pass


class ExportTooLarge(ValueError):
    pass


@dataclass(frozen=True)
class Reading:
    model: str  # what the conversations will use: the server's default model
    max_title_chars: int
    max_unzipped_bytes: int  # of conversations.json inside a .zip


def conversations_in(file: IO[bytes], reading: Reading) -> Generator[ImportedConversation, None, None]:
    """Each conversation of the export in `file`, in the export's order."""
    file.seek(0)
    if file.read(4) == ZIP_MAGIC:
        file.seek(0)
        yield from _from_zip(file, reading)
        return
    file.seek(0)
    yield from _from_json(file, reading)


def _from_zip(file: IO[bytes], reading: Reading) -> Iterator[ImportedConversation]:
    try:
        archive = zipfile.ZipFile(file)
        members = [m for m in archive.infolist() if m.filename.rsplit("/", 1)[-1] == MEMBER and not m.is_dir()]
        if len(members) != 1:
            raise MalformedExport(f"the .zip must hold one {MEMBER} (a ChatGPT data export)")
        with archive.open(members[0]) as member:
            yield from _from_json(_Bounded(member, reading.max_unzipped_bytes), reading)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, RuntimeError) as exc:
        raise MalformedExport(f"not a readable .zip: {exc}") from None


class _Bounded:
    """A file read only up to `limit` bytes: a zip's member may unpack to far more than it took."""

    def __init__(self, file: IO[bytes], limit: int) -> None:
        self.file = file
        self.left = limit
        self.limit = limit

    def read(self, size: int = -1) -> bytes:
        chunk = self.file.read(65_536 if size is None or size < 0 else min(size, 1 << 20))
        self.left -= len(chunk)
        if self.left < 0:
            raise ExportTooLarge(f"{MEMBER} unpacks to more than {self.limit} bytes")
        return chunk


def _from_json(file: Any, reading: Reading) -> Iterator[ImportedConversation]:
    start = file.read(64)  # an array of conversations; an object would yield none, silently
    if start.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] != b"[":
        raise MalformedExport(f"{MEMBER} must be a JSON array of conversations")
    now = int(time.time())
    try:
        for n, item in enumerate(ijson.items(_Rewound(start, file), "item", use_float=True), 1):
            yield conversation(item, n, reading, now)
    except ijson.JSONError as exc:
        raise MalformedExport(f"{MEMBER} is not valid JSON: {exc}") from None


class _Rewound:
    """`file` with the bytes already read off its front put back."""

    def __init__(self, head: bytes, file: Any) -> None:
        self.head = head
        self.file = file

    def read(self, size: int = -1) -> bytes:
        if self.head and size != 0:  # (ijson reads 0 bytes to learn whether they are bytes)
            head, self.head = self.head, b""
            return head
        data: bytes = self.file.read(size)
        return data


def conversation(item: Any, n: int, reading: Reading, now: int) -> ImportedConversation:
    """One conversation of the export as a message tree; MalformedExport says which is wrong."""
    if not isinstance(item, dict) or not isinstance(item.get("mapping"), dict):
        raise MalformedExport(f"conversation {n} has no 'mapping' object")
    mapping: dict[str, Any] = item["mapping"]
    created = _seconds(item.get("create_time")) or now
    title: str = item["title"] if isinstance(item.get("title"), str) else ""
    nodes = {key: node for key, node in mapping.items() if isinstance(node, dict)}
    if len(nodes) != len(mapping):
        raise MalformedExport(f"conversation {n}: a node of its mapping is not an object")
    kept = {key: text for key, node in nodes.items() if (text := _text(node.get("message"))) is not None}
    above = _kept_above(nodes, set(kept), n)  # node -> the nearest kept node above it ("" for none)
    children: dict[str, list[str]] = {}
    for key in nodes:  # the export's order: mapping order, oldest first within a parent
        if key in kept:
            children.setdefault(above[key], []).append(key)
    for siblings in children.values():
        siblings.sort(key=lambda key: _seconds(nodes[key]["message"].get("create_time")) or 0)
    ids: dict[str, int] = {}
    messages: list[ImportedMessage] = []
    stack = list(reversed(children.get("", [])))
    while stack:  # depth first: a parent before its children, siblings in their order
        key = stack.pop()
        ids[key] = len(ids) + 1
        message = nodes[key]["message"]
        role = message["author"]["role"]
        messages.append(ImportedMessage(ids[key], ids.get(above[key], 0), role, kept[key],
                                        _seconds(message.get("create_time")) or created))
        stack.extend(reversed(children.get(key, [])))
    current = item.get("current_node")
    current = current if isinstance(current, str) and current in nodes else ""
    leaf = current if current in kept else above.get(current, "")
    if not leaf and children.get(""):
        leaf = children[""][-1]
    while children.get(leaf):  # the active branch ends at a message without children
        leaf = children[leaf][-1]
    return ImportedConversation(title=title[:reading.max_title_chars], created_time=created, messages=messages,
                                active_leaf_id=ids.get(leaf, 0), model=reading.model)


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
    text = "\n\n".join(part for part in parts if isinstance(part, str) and part)  # images' parts are objects
    return text if text.strip() else None


def _kept_above(nodes: dict[str, Any], kept: set[str], n: int) -> dict[str, str]:
    """For every node, the nearest kept node strictly above it ("" when none): one walk up
    per chain, remembered, so a long conversation costs its length, not its length squared."""
    above: dict[str, str] = {}
    for start in nodes:
        chain: list[str] = []
        on_chain: set[str] = set()
        key = start
        while key not in above:
            chain.append(key)
            on_chain.add(key)
            parent = nodes[key].get("parent")
            if not isinstance(parent, str) or parent not in nodes:
                above[key] = ""
                break
            if parent in on_chain:
                raise MalformedExport(f"conversation {n}: its mapping has a cycle")
            key = parent
        for below in reversed(chain):  # from the top of the chain down
            parent = nodes[below].get("parent")
            if below not in above:
                above[below] = parent if parent in kept else above[parent]
    return above


def _seconds(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if 0 < value < 2**53 else None
