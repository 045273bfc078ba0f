"""Writing imported conversations (DESIGN.md, Import): each with its whole message tree in
one statement per table, a user with all of theirs in one transaction, and the ids kept
where the import asks (the Go original's) always below those this database hands out next.
Their text comes storable (records.storable) from whoever read it."""
from __future__ import annotations

import time
from typing import AsyncIterator

import sqlalchemy as sa
from databases import Database

from realtime_llm.importers.records import ImportedConversation
from realtime_llm.keys import APIKeyBox, mask_api_key
from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.compiled import Compiled, fetch_all, fetch_one
from realtime_llm.store.schema import conversations, messages, users

INSERT = Compiled(messages.insert().values(
    conversation_id=sa.bindparam("cid"), message_id=sa.bindparam("message_id"), parent_id=sa.bindparam("parent_id"),
    role=sa.bindparam("role"), content=sa.bindparam("content"), created_time=sa.bindparam("created_time")))


class ImportWriter:
    def __init__(self, database: Database, box: APIKeyBox) -> None:
        self.database = database
        self.box = box

    async def highest_id_used(self) -> int:
        """The highest conversation id this database has handed out, deleted ones included:
        an id at or below it may still be named by a stream, a cache or a client of the
        conversation that had it, so an import never gives it to another."""
        if self.database.url.dialect == "sqlite":
            used = sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'conversations'")
        else:
            used = sa.text(f"SELECT pg_sequence_last_value({SEQUENCE}::regclass)")  # NULL before its first use
        highest = await fetch_one(self.database, sa.select(sa.func.max(conversations.c.id)))
        seq = await fetch_one(self.database, used)
        return max(int((highest or [0])[0] or 0), int((seq or [0])[0] or 0))

    async def reserve_ids(self, highest: int) -> None:
        """From now on new conversations get ids above `highest` (the largest one to keep):
        SQLite's AUTOINCREMENT counter and PostgreSQL's sequence moved on, never back."""
        if self.database.url.dialect == "sqlite":
            statements = [
                "UPDATE sqlite_sequence SET seq = :highest WHERE name = 'conversations' AND seq < :highest",
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'conversations', :highest WHERE NOT EXISTS "
                "(SELECT 1 FROM sqlite_sequence WHERE name = 'conversations')"]
        else:
            statements = [f"SELECT setval({SEQUENCE}, :highest) WHERE :highest > "
                          f"COALESCE(pg_sequence_last_value({SEQUENCE}::regclass), 0)"]

        async def reserve() -> None:
            async with self.database.transaction():
                for statement in statements:
                    await fetch_all(self.database, sa.text(statement).bindparams(highest=highest))
        await atomically(reserve)

    async def ids_between(self, low: int, high: int) -> set[int]:
        """Ids of conversations above `low`, up to `high`."""
        rows = await fetch_all(self.database, sa.select(conversations.c.id).where(
            conversations.c.id > low, conversations.c.id <= high))
        return {int(row[0]) for row in rows}

    async def add_user(self, username: str, password_hash: str,
                       imported: AsyncIterator[ImportedConversation]) -> list[tuple[int, int]]:
        """A user with their conversations as they come, all or nothing: each conversation's
        id (a new one where it had none) and how many messages it has."""
        async def write() -> list[tuple[int, int]]:
            async with self.database.transaction():
                [(user_id,)] = await fetch_all(self.database, users.insert().returning(users.c.id).values(
                    username=username, password_hash=password_hash, created_time=int(time.time())))
                return [(await self._add(int(user_id), conversation), len(conversation.messages))
                        async for conversation in imported]
        return await atomically(write)

    async def add_conversation(self, user_id: int, conversation: ImportedConversation, written: list[int]) -> None:
        """A conversation for a user, in one transaction; its id goes on `written` once it is
        committed, even if the caller is cancelled meanwhile."""
        async def write() -> None:
            async with self.database.transaction():
                cid = await self._add(user_id, conversation)
            written.append(cid)
        await atomically(write)

    async def _add(self, user_id: int, conversation: ImportedConversation) -> int:
        values = dict(user_id=user_id, title=conversation.title, model=conversation.model,
                      system_prompt=conversation.system_prompt, api_key_sealed=self.box.seal(conversation.api_key),
                      api_key_hint=mask_api_key(conversation.api_key),
                      created_time=conversation.created_time,
                      last_message_id=max((m.message_id for m in conversation.messages), default=0),
                      message_count=len(conversation.messages), active_leaf_id=conversation.active_leaf_id)
        if conversation.id is not None:
            values["id"] = conversation.id
        [(cid,)] = await fetch_all(self.database, conversations.insert().values(**values)
                                   .returning(conversations.c.id))
        if conversation.messages:
            await INSERT.execute_many(self.database, [
                dict(cid=cid, message_id=m.message_id, parent_id=m.parent_id, role=m.role, content=m.content,
                     created_time=m.created_time) for m in conversation.messages])
        return int(cid)


SEQUENCE = "pg_get_serial_sequence('conversations', 'id')"
