"""Uploaded files and the messages that carry them (DESIGN.md, Attachments)."""
from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

import sqlalchemy as sa
from databases import Database

from realtime_llm.errors import BadRequest, PayloadTooLarge
from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.compiled import Compiled, Script, fetch_all, fetch_one
from realtime_llm.store.schema import file_chunks, files, message_files, users

META_COLUMNS = (files.c.id, files.c.name, files.c.content_type, files.c.size, files.c.width, files.c.height,
                files.c.text_chars)
INSERT_CHUNK = Compiled(file_chunks.insert().values(file_id=sa.bindparam("file_id"), seq=sa.bindparam("seq"),
                                                    data=sa.bindparam("data")))
ONE_CHUNK = Compiled(sa.select(file_chunks.c.data).where(file_chunks.c.file_id == sa.bindparam("file_id"),
                                                         file_chunks.c.seq == sa.bindparam("seq")))


@dataclass(frozen=True)
class StoredFile:
    """A file as messages and the prompt see it; `text` and `data` only where asked for."""

    file_id: str
    name: str
    content_type: str
    size: int
    width: int | None = None
    height: int | None = None
    text_chars: int = 0  # how long what a model reads of it is (its text; 0 for an image)
    text: str = ""
    data: bytes = b""

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")

    def json(self) -> dict[str, object]:
        return {"file_id": self.file_id, "name": self.name, "content_type": self.content_type, "size": self.size}


def _stored(row: Sequence[Any], text: str = "", data: bytes = b"") -> StoredFile:
    """From a row of META_COLUMNS."""
    return StoredFile(row[0], row[1], row[2], int(row[3]), row[4], row[5], int(row[6] or 0), text, data)


class FileStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, user_id: int, *, name: str, content_type: str, size: int, width: int | None,
                     height: int | None, text: str, text_chars: int, chunks: AsyncIterator[bytes],
                     max_bytes_per_user: int) -> dict[str, object]:
        """Keep a file of the user's, its bytes a chunk at a time, if their files together
        stay within `max_bytes_per_user` (checked in the same transaction, with the user's
        row locked on PostgreSQL)."""
        file_id = "file_" + secrets.token_urlsafe(18)
        now = int(time.time())

        async def insert() -> None:  # one transaction, not to be cut by a cancel
            async with self.database.transaction():
                # (FOR NO KEY UPDATE: the user's other writes, which only reference the row, go on.)
                await fetch_all(self.database, sa.select(users.c.id).where(users.c.id == user_id)
                                .with_for_update(key_share=True))
                [(used,)] = await fetch_all(self.database, sa.select(sa.func.coalesce(sa.func.sum(files.c.size), 0))
                                            .where(files.c.user_id == user_id))
                if int(used) + size > max_bytes_per_user:
                    raise PayloadTooLarge(f"your files would take more than {max_bytes_per_user} bytes: "
                                          "delete conversations holding some first")
                await fetch_all(self.database, files.insert().values(
                    id=file_id, user_id=user_id, name=name, content_type=content_type, size=size, width=width,
                    height=height, text=text, text_chars=text_chars, created_time=now))
                seq = 0
                async for chunk in chunks:
                    await INSERT_CHUNK.fetch_all(self.database, file_id=file_id, seq=seq, data=chunk)
                    seq += 1

        await atomically(insert)
        return {"file_id": file_id, "name": name, "content_type": content_type, "size": size, "created_time": now}

    async def find(self, file_id: str, user_id: int) -> StoredFile | None:
        """The user's file of that id, without its bytes (read them with chunks())."""
        row = await fetch_one(self.database, sa.select(*META_COLUMNS)
                              .where(files.c.id == file_id, files.c.user_id == user_id))
        return None if row is None else _stored(row)

    async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """A file's bytes, a chunk (one row) at a time: a download never holds it whole."""
        seq = 0
        while (chunk := await ONE_CHUNK.fetch_val(self.database, file_id=file_id, seq=seq)) is not None:
            yield bytes(chunk)
            seq += 1

    async def owned(self, file_ids: Sequence[str], user_id: int) -> list[StoredFile]:
        """The user's files of these ids, in the order given; any other id is a 400 (someone
        else's file is answered exactly like one that does not exist)."""
        rows = await fetch_all(self.database, sa.select(*META_COLUMNS)
                               .where(files.c.id.in_(list(file_ids)), files.c.user_id == user_id))
        found = {row[0]: _stored(row) for row in rows}
        missing = [f for f in file_ids if f not in found]
        if missing:
            raise BadRequest(f"no file {missing[0][:60]!r} of yours: upload it first (POST /api/files)")
        return [found[f] for f in file_ids]

    async def of_messages(self, conversation_id: int, message_ids: Sequence[int] | None = None,
                          *, contents: bool = False) -> dict[int, list[StoredFile]]:
        """The files each message carries, in order (of every message, or of these); with
        `contents`, what a model reads of them too."""
        if message_ids is not None and not message_ids:
            return {}
        m = message_files
        query = sa.select(m.c.message_id, *META_COLUMNS, files.c.text if contents else sa.literal("")).join_from(
            m, files, files.c.id == m.c.file_id).where(m.c.conversation_id == conversation_id).order_by(
            m.c.message_id, m.c.position)
        if message_ids is not None:
            query = query.where(m.c.message_id.in_(list(message_ids)))
        rows = await fetch_all(self.database, query)
        data = await self._bytes_of({row[1] for row in rows if row[3] != "application/pdf"}) if contents else {}
        carried: dict[int, list[StoredFile]] = {}
        for row in rows:
            stored = _stored(row[1:], row[8], data.get(row[1], b""))
            if contents and not stored.is_image and stored.content_type != "application/pdf":
                stored = dataclasses.replace(stored, text=stored.data.decode("utf-8"), data=b"")
            carried.setdefault(row[0], []).append(stored)
        return carried

    async def _bytes_of(self, file_ids: set[str]) -> dict[str, bytes]:
        """Whole files, for the prompt (which sends them whole)."""
        if not file_ids:
            return {}
        pieces: dict[str, list[bytes]] = {}
        for file_id, chunk in await fetch_all(self.database, sa.select(file_chunks.c.file_id, file_chunks.c.data)
                                              .where(file_chunks.c.file_id.in_(sorted(file_ids)))
                                              .order_by(file_chunks.c.file_id, file_chunks.c.seq)):
            pieces.setdefault(file_id, []).append(bytes(chunk))
        return {file_id: b"".join(chunks) for file_id, chunks in pieces.items()}

    async def delete_carried_only_by(self, conversation_id: int, user_id: int) -> None:
        """Inside the transaction deleting a conversation: its messages stop carrying files,
        and those of its files no other conversation's messages carry go."""
        m = message_files
        theirs = [row[0] for row in await fetch_all(self.database, sa.select(m.c.file_id).distinct()
                                                    .where(m.c.conversation_id == conversation_id))]
        await self._delete_uncarried(sa.and_(files.c.id.in_(theirs), files.c.user_id == user_id),
                                     before=m.delete().where(m.c.conversation_id == conversation_id))

    async def sweep_unattached(self, ttl_seconds: int, batch: int = 500) -> int:
        """Delete files older than `ttl_seconds` that no message carries, `batch` at a time
        (a transaction each, so the database's write lock is held briefly); how many went."""
        gone = 0
        while True:
            async with self.database.transaction():
                went = await self._delete_uncarried(files.c.created_time < int(time.time()) - ttl_seconds, limit=batch)
            gone += went
            if went < batch:
                return gone

    async def _delete_uncarried(self, candidates: Any, *, before: Any = None, limit: int | None = None) -> int:
        """Delete the files matching `candidates` that no message carries, in the caller's
        transaction: their rows are locked first (PostgreSQL), so a message that attaches one
        meanwhile either commits before the check below, which then sees it, or waits and
        then fails to find the file (SQLite's transactions are serial already)."""
        if before is not None:  # (the messages being deleted: what they carry is a candidate now)
            await fetch_all(self.database, before)
        carried = sa.select(message_files.c.file_id).where(message_files.c.file_id == files.c.id)
        query = sa.select(files.c.id).where(candidates, ~sa.exists(carried)).order_by(files.c.id).with_for_update()
        locked = [row[0] for row in await fetch_all(self.database, query if limit is None else query.limit(limit))]
        if not locked:
            return 0
        gone = await fetch_all(self.database, files.delete().where(files.c.id.in_(locked), ~sa.exists(carried))
                               .returning(files.c.id))
        return len(gone)


ATTACH = Compiled(message_files.insert().from_select(
    ["conversation_id", "message_id", "position", "file_id"],
    sa.select(sa.cast(sa.bindparam("cid"), message_files.c.conversation_id.type),
              sa.cast(sa.bindparam("message_id"), sa.Integer), sa.cast(sa.bindparam("position"), sa.Integer),
              files.c.id).where(files.c.id == sa.bindparam("file_id"), files.c.user_id == sa.bindparam("user_id"))
    .with_for_update(read=True, key_share=True))  # PostgreSQL: waits for a delete under way, then sees it
    .returning(message_files.c.file_id))


def attach(conversation_id: int, user_id: int, message_id: int, file_ids: Sequence[str]) -> Script[None]:
    """Part of the transaction that adds a message: it carries these files, each still the
    owner's now (a file swept or deleted since it was checked is a 400, and nothing is saved)."""
    for position, file_id in enumerate(file_ids):
        if not (yield ATTACH.bind(cid=conversation_id, message_id=message_id, position=position,
                                  file_id=file_id, user_id=user_id)):
            raise BadRequest(f"the file {file_id!r} is gone: upload it again")
