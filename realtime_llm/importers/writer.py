"""Writing imported conversations (DESIGN.md, Import): each with its whole message tree in
one statement per table, a user with all of theirs in one transaction, and the ids kept
where the import asks (the Go original's) always below those this database hands out next."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import sqlalchemy as sa
from databases import Database

from realtime_llm.keys import APIKeyBox, mask_api_key
from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.compiled import Compiled, fetch_all, fetch_one
from realtime_llm.store.schema import conversations, messages, users

INSERT = Compiled(messages.insert().values(
    conversation_id=sa.bindparam("cid"), message_id=sa.bindparam("message_id"), parent_id=sa.bindparam("parent_id"),
    role=sa.bindparam("role"), content=sa.bindparam("content"), created_time=sa.bindparam("created_time")))


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


class ImportWriter:
    def __init__(self, database: Database, box: APIKeyBox) -> None:
        self.database = database
        self.box = box

    async def highest_id_used(self) -> int:
        """The highest conversation id this database has handed out, deleted ones included:
        an id at or below it may still be named by a stream, a cache or a client of the
        conversation that had it, so an import never gives it to another."""
        highest = int(await _scalar(self.database, sa.select(sa.func.coalesce(sa.func.max(conversations.c.id), 0))))
        if self.database.url.dialect == "sqlite":
            seq = await _scalar(self.database, sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'conversations'"))
        else:
            name = await _sequence(self.database)
            seq = await _scalar(self.database, sa.text(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                                                       f"FROM {name}"))
        return max(highest, int(seq or 0))

    async def taken(self, ids: Sequence[int]) -> set[int]:
        rows = await fetch_all(self.database, sa.select(conversations.c.id).where(conversations.c.id.in_(ids)))
        return {int(row[0]) for row in rows}

    async def add_user(self, username: str, password_hash: str, imported: Sequence[ImportedConversation]) -> int:
        """A user with their conversations, all or nothing; their id."""
        async def write() -> int:
            async with self.database.transaction():
                [(user_id,)] = await fetch_all(self.database, users.insert().returning(users.c.id).values(
                    username=username, password_hash=password_hash, created_time=int(time.time())))
                for conversation in imported:
                    await self._add(int(user_id), conversation)
                await self._ids_above(imported)
            return int(user_id)
        return await atomically(write)

    async def add_conversations(self, user_id: int, imported: Sequence[ImportedConversation]) -> list[int]:
        """Conversations for a user, all or nothing; their ids."""
        async def write() -> list[int]:
            async with self.database.transaction():
                return [await self._add(user_id, conversation) for conversation in imported]
        return await atomically(write)

    async def _add(self, user_id: int, conversation: ImportedConversation) -> int:
        values = dict(user_id=user_id, title=storable(conversation.title), model=storable(conversation.model),
                      system_prompt=storable(conversation.system_prompt),
                      api_key_sealed=self.box.seal(conversation.api_key),
                      api_key_hint=mask_api_key(conversation.api_key), created_time=conversation.created_time,
                      last_message_id=max((m.message_id for m in conversation.messages), default=0),
                      message_count=len(conversation.messages), active_leaf_id=conversation.active_leaf_id)
        if conversation.id is not None:
            values["id"] = conversation.id
        [(cid,)] = await fetch_all(self.database, conversations.insert().values(**values)
                                   .returning(conversations.c.id))
        if conversation.messages:
            await INSERT.execute_many(self.database, [
                dict(cid=cid, message_id=m.message_id, parent_id=m.parent_id, role=m.role, content=storable(m.content),
                     created_time=m.created_time) for m in conversation.messages])
        return int(cid)

    async def _ids_above(self, imported: Sequence[ImportedConversation]) -> None:
        """New conversations get ids above kept ones: SQLite's AUTOINCREMENT counter follows
        an explicit id by itself; a PostgreSQL sequence is moved on here (never back)."""
        kept = max((c.id for c in imported if c.id is not None), default=0)
        if kept and self.database.url.dialect == "postgresql":
            name = await _sequence(self.database)
            await fetch_all(self.database, sa.text(
                f"SELECT setval('{name}', GREATEST(:kept, (SELECT last_value FROM {name})))").bindparams(kept=kept))


UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # in a str, any surrogate is a lone one


def storable(text: str) -> str:
    """Text every database holds: no NUL (PostgreSQL refuses it), no lone surrogate (not
    UTF-8), each replaced by U+FFFD, as a JSON export may well carry them."""
    return UNSTORABLE.sub("\ufffd", text)


async def _scalar(database: Database, statement: sa.ClauseElement) -> Any:
    row = await fetch_one(database, statement)
    return None if row is None else row[0]


async def _sequence(database: Database) -> str:
    """The name of the PostgreSQL sequence behind conversation ids, as the database spells it."""
    return str(await _scalar(database, sa.text("SELECT pg_get_serial_sequence('conversations', 'id')")))
