"""Reading the Go original (llm-backend-api): its SQLite file (users; conversations with
their ids as TEXT, with or without `create_time`) and its Redis (`conversation:<id>`, a
JSON object holding the messages, model, plaintext API key and creation time)."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import orjson

from realtime_llm.bodies import MAX_ID
from realtime_llm.importers.records import ImportedConversation, ImportedMessage, storable, unix_time


class UnreadableSource(Exception):
    """The original's database or Redis cannot be read at all: nothing is imported."""


@dataclass(frozen=True)
class OriginalConversation:
    key: str  # its id as the original stored it ("42", or "000042" in early versions)
    title: str
    created_time: int | None  # None: the schema before `create_time`


@dataclass
class OriginalUser:
    id: int
    username: str
    password_hash: str
    conversations: list[OriginalConversation] = field(default_factory=list)


@dataclass
class OriginalData:
    users: list[OriginalUser]
    orphans: list[OriginalConversation]  # conversations of a user id with no user


def read_sqlite(path: str) -> OriginalData:
    """Everything in the original's SQLite file, read-only (blocking: the command's thread)."""
    if not Path(path).is_file():
        raise UnreadableSource(f"{path}: no such file")
    try:
        database = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise UnreadableSource(f"{path}: {exc}") from None
    database.text_factory = lambda raw: raw.decode("utf-8", "replace")  # Go wrote whatever it was given
    try:
        columns = {row[1] for row in database.execute("PRAGMA table_info(conversations)")}
        if not {"id", "title", "user_id"} <= columns:
            raise UnreadableSource(f"{path}: no conversations table of llm-backend-api's")
        users = {row[0]: OriginalUser(row[0], row[1], row[2])
                 for row in database.execute("SELECT id, username, password FROM users ORDER BY id")}
        created = "create_time" if "create_time" in columns else "NULL"
        orphans: list[OriginalConversation] = []
        for key, title, user_id, created_time in database.execute(
                f"SELECT id, title, user_id, {created} FROM conversations ORDER BY rowid"):
            conversation = OriginalConversation(str(key), str(title or ""), _unix_time(created_time))
            owner = users.get(user_id)
            (owner.conversations if owner is not None else orphans).append(conversation)
        return OriginalData(list(users.values()), orphans)
    except sqlite3.Error as exc:  # not a database, or not the original's
        raise UnreadableSource(f"{path}: {exc}") from None
    finally:
        database.close()


# The original drew ids below 1,000,000; an id far above that is no id of its, and keeping
# it would leave new conversations too little room below 2**53 (MAX_ID).
MAX_KEPT_ID = 2**31 - 1


def conversation_id(key: str) -> int | None:
    """The original's TEXT id as a number (0 included: the original drew it too), or None."""
    if not (key.isascii() and key.isdigit()) or len(key) > 16:
        return None
    return int(key)


def kept_id(number: int) -> bool:
    """Whether a conversation keeps the original's id here (ids start at 1 here)."""
    return 1 <= number <= min(MAX_KEPT_ID, MAX_ID)


def blob_keys(key: str, keys: set[str]) -> list[str]:
    """Where the original's Redis keeps a conversation: under its id as written, and, for
    an early zero-padded id, as later versions (which read ids as integers) wrote it, unless
    that is another conversation's id in the original's table (`keys`)."""
    found = [f"conversation:{key}"]
    if key.isascii() and key.isdigit() and str(int(key)) != key and str(int(key)) not in keys:
        found.append(f"conversation:{int(key)}")
    return found


@dataclass(frozen=True)
class Converted:
    conversation: ImportedConversation
    problem: str = ""  # what was left out, for the report


@dataclass(frozen=True)
class Target:
    """What this server makes of a conversation: its default model, the models it serves,
    its limits."""

    default_model: str
    can_serve: Callable[[str], bool]
    max_title_chars: int
    max_api_key_chars: int
    now: int


def convert(cid: int | None, row: OriginalConversation, blob: bytes | None, target: Target) -> Converted:
    """One of the original's conversations, with what its blob holds: the system prompt (its
    message 0), the messages in order (ids from 1, each following the one before), the
    model and its API key (a model not served here: the default, and no key, which was for
    the original's provider). A missing or unreadable blob: no messages."""
    title = storable(row.title[:target.max_title_chars])
    empty = ImportedConversation(title=title, created_time=row.created_time or target.now, messages=(),
                                 active_leaf_id=0, model=target.default_model, id=cid)
    if blob is None:
        return Converted(empty, "no messages in Redis: imported empty")
    try:
        data = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return Converted(empty, "its Redis blob is not JSON: imported empty")
    if not isinstance(data, dict) or not isinstance(data.get("messages") or [], list):
        return Converted(empty, "its Redis blob is not a conversation: imported empty")
    system_prompt, skipped = "", 0
    kept: list[tuple[str, str]] = []
    for message in data.get("messages") or []:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or role not in ("system", "user", "assistant"):
            skipped += 1
        elif role == "system":
            if system_prompt or kept:
                skipped += 1  # only a first system message is the system prompt
            else:
                system_prompt = storable(content)
        else:
            kept.append((role, storable(content)))
    problems = [f"{skipped} message(s) neither user, assistant nor a first system prompt left out"] if skipped else []
    model, api_key = _string(data.get("model")), _string(data.get("api_key"))
    if not model or len(model) > 200 or not model.isprintable() or not target.can_serve(model):
        if model:
            problems.append(f"its model {model[:200]!r} is not served here: {target.default_model!r}, without its key")
        model, api_key = target.default_model, ""
    if len(api_key) > target.max_api_key_chars or not api_key.isprintable():
        problems.append("its API key is no key (too long, or not printable): left out")
        api_key = ""
    created = row.created_time or _unix_time(data.get("created_time")) or target.now
    imported = ImportedConversation(
        title=title or storable(_string(data.get("title"))[:target.max_title_chars]), created_time=created,
        messages=tuple(ImportedMessage(n, n - 1, role, content, created) for n, (role, content) in enumerate(kept, 1)),
        active_leaf_id=len(kept), model=model, id=cid, system_prompt=system_prompt, api_key=api_key)
    return Converted(imported, "; ".join(problems))


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _unix_time(value: Any) -> int | None:
    """Unix seconds, from an integer (later versions) or an ISO 8601 string (early ones)."""
    if isinstance(value, (int, float)):
        time = unix_time(value)
        return None if time is None else int(time)
    if isinstance(value, str) and value:
        if value.isascii() and value.isdigit():
            return _unix_time(int(value)) if len(value) <= 16 else None
        try:
            return _unix_time(int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()))
        except (ValueError, OverflowError):
            return None
    return None
