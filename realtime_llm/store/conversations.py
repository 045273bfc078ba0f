"""Conversations and their messages: the SQL database is the source of truth."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import sqlalchemy as sa
from databases import Database

from realtime_llm.cache import HistoryCache
from realtime_llm.errors import ConversationNotFound, PayloadTooLarge
from realtime_llm.keys import APIKeyBox, mask_api_key
from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.compiled import fetch_all, fetch_one
from realtime_llm.store.files import FileStore
from realtime_llm.store.messages import MessageStore
from realtime_llm.store.records import Conversation
from realtime_llm.store.schema import conversations, messages
from realtime_llm.store.statements import (
    COPY_PATH,
    COPY_PATH_FILES,
    EVENT_CEILING,
    EXISTS,
    OWNED,
    PATH_LENGTH,
    RAISE_EVENT_CEILING,
)

LIST_LIMIT_MAX = 1000
FORK_MAX_MESSAGES = 10_000  # a fork writes a whole branch: bounded, like every write


class ConversationStore:
    def __init__(self, database: Database, box: APIKeyBox, cache: HistoryCache | None = None,
                 fts: bool = False, files: FileStore | None = None) -> None:
        self.database = database
        self.box = box
        self.cache = cache or HistoryCache()
        self.fts = fts  # SQLite's messages_fts index exists (see schema.SEARCH_SQLITE)
        self.files = files or FileStore(database)
        self.messages = MessageStore(database, self.cache, self.files)

    async def create(
        self, user_id: int, *, title: str, model: str, system_prompt: str, api_key: str, params: str = "{}"
    ) -> Conversation:
        values = dict(
            user_id=user_id,
            title=title,
            model=model,
            system_prompt=system_prompt,
            api_key_sealed=self.box.seal(api_key),
            api_key_hint=mask_api_key(api_key),
            created_time=int(time.time()),
            params=params,
        )
        [(conversation_id,)] = await fetch_all(self.database, conversations.insert().values(**values)
                                               .returning(conversations.c.id))
        return Conversation(id=int(conversation_id), **values)  # type: ignore[arg-type]

    async def get_owned(self, conversation_id: int, user_id: int) -> Conversation:
        """The conversation if this user owns it; otherwise exactly as if it did not exist."""
        return owned(await self.find_owned(conversation_id, user_id))

    async def find_owned(self, conversation_id: int, user_id: int) -> Conversation | None:
        row = await OWNED.fetch_one(self.database, cid=conversation_id, user_id=user_id)
        return None if row is None else Conversation(*row)

    async def list_for_user(self, user_id: int, *, limit: int | None = None, before: int | None = None,
                            q: str | None = None) -> list[dict[str, object]]:
        """Newest first. `before` continues after the last conversation seen (ids only grow,
        so new conversations never shift a page); `q` matches titles and message text,
        case-insensitively and literally (no wildcards)."""
        c = conversations
        query = sa.select(c.c.id, c.c.title, c.c.created_time).where(c.c.user_id == user_id)
        if before is not None:
            query = query.where(c.c.id < before)
        if q:
            query = query.where(sa.or_(c.c.title.ilike(_like_pattern(q), escape="\\"),
                                       c.c.id.in_(self._conversations_mentioning(q))))
        query = query.order_by(c.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        return [{"conversation_id": cid, "title": title, "created_time": created}
                for cid, title, created in await fetch_all(self.database, query)]

    def _conversations_mentioning(self, q: str) -> sa.Select[Any]:
        """Ids of conversations with a message containing `q`, through the search index
        where there is one; the caller keeps the user's own. (Filtering by user in here
        too made PostgreSQL pick a nested loop: 6.6 s instead of 0.1 s for a common word.)"""
        m = messages
        mine = sa.select(m.c.conversation_id)
        if self.fts and len(q) >= 3:
            # FTS5 trigram: the query as one quoted phrase is a literal substring match.
            phrase = '"' + q.replace('"', '""') + '"'
            hits: sa.Select[Any] = sa.select(sa.column("rowid")).select_from(sa.table("messages_fts")).where(
                sa.text("messages_fts MATCH :phrase").bindparams(phrase=phrase))
            # The messages not indexed yet (about a second's worth; store/searchindex.py), scanned.
            # (IN, not a join: without statistics SQLite drove that join from `messages`, a scan.)
            noted: sa.Select[Any] = sa.select(sa.column("id")).select_from(sa.table("messages_fts_pending"))
            unindexed = sa.select(m.c.id).where(m.c.id.in_(noted), m.c.content.ilike(_like_pattern(q), escape="\\"))
            return mine.where(m.c.id.in_(sa.union_all(hits, unindexed)))
        # PostgreSQL: ILIKE, which the pg_trgm index serves; SQLite with fewer than three
        # characters (trigrams cannot), or without the FTS5 trigram tokenizer: a scan.
        return mine.where(m.c.content.ilike(_like_pattern(q), escape="\\"))

    async def update(self, conversation: Conversation, **changes: str) -> Conversation:
        """Change title, model, system_prompt, params (JSON) and/or api_key (sealed). A
        generation already running keeps the settings it started with; the next one uses these."""
        values: dict[str, object] = {k: v for k, v in changes.items()
                                     if k in ("title", "model", "system_prompt", "params")}
        if "api_key" in changes:
            values["api_key_sealed"] = self.box.seal(changes["api_key"])
            values["api_key_hint"] = mask_api_key(changes["api_key"])
        if values:  # bound to the owner too, as every write of a conversation
            await fetch_all(self.database, conversations.update().values(**values).where(
                conversations.c.id == conversation.id, conversations.c.user_id == conversation.user_id))
        return dataclasses.replace(conversation, **values)  # type: ignore[arg-type]

    async def fork(self, conversation: Conversation, message_id: int) -> Conversation | None:
        """A new conversation of the same owner holding copies of the branch up to
        `message_id` (ids from 1; times, thinking and usage kept) and the settings; None if
        there is no such message. The copy is made inside the database, one statement.
        Usage is not counted again: nothing was answered anew."""
        whole = dict(cid=conversation.id, start=message_id, page=FORK_MAX_MESSAGES + 1)
        length = int(await PATH_LENGTH.fetch_val(self.database, **whole))
        if length == 0:
            return None
        if length > FORK_MAX_MESSAGES:
            raise PayloadTooLarge(f"a branch of more than {FORK_MAX_MESSAGES} messages is too long to fork")
        values = {f: getattr(conversation, f) for f in ("user_id", "title", "model", "system_prompt",
                                                          "api_key_sealed", "api_key_hint", "params")}
        values.update(created_time=int(time.time()), last_message_id=length, message_count=length,
                      active_leaf_id=length)

        async def copy() -> int:  # one transaction, not to be cut by a cancel
            async with self.database.transaction():
                [(new_id,)] = await fetch_all(self.database, conversations.insert().values(**values)
                                              .returning(conversations.c.id))
                await COPY_PATH.fetch_all(self.database, new=new_id, n=length, **whole)
                await COPY_PATH_FILES.fetch_all(self.database, new=new_id, n=length, **whole)
            return int(new_id)

        return Conversation(id=await atomically(copy), **values)

    async def set_title_if_untitled(self, conversation: Conversation, title: str) -> bool:
        """An automatic title: written only while the conversation has none, so a title the
        user set, even a moment ago, is never overwritten (nor one deleted since)."""
        updated = await fetch_one(self.database, conversations.update()
                                  .where(conversations.c.id == conversation.id,
                                         conversations.c.user_id == conversation.user_id, conversations.c.title == "")
                                  .values(title=title)
                                  .returning(conversations.c.id))
        return updated is not None

    async def delete_owned(self, conversation_id: int, user_id: int) -> None:
        async def delete() -> None:  # one transaction, not to be cut by a cancel
            async with self.database.transaction():
                await self.get_owned(conversation_id, user_id)
                await self.files.delete_carried_only_by(conversation_id, user_id)
                await fetch_all(self.database, messages.delete().where(messages.c.conversation_id == conversation_id))
                await fetch_all(self.database, conversations.delete().where(conversations.c.id == conversation_id,
                                                                            conversations.c.user_id == user_id))
        await atomically(delete)
        self.messages.paths.drop(conversation_id)
        await self.cache.drop(conversation_id)

    async def exists(self, conversation_id: int) -> bool:
        return await EXISTS.fetch_one(self.database, cid=conversation_id) is not None

    async def event_ceiling(self, conversation_id: int) -> int:
        """No event id above this has been handed out in the conversation (broker/eventids.py)."""
        return int(await EVENT_CEILING.fetch_val(self.database, cid=conversation_id) or 0)

    async def raise_event_ceiling(self, conversation_id: int, ceiling: int) -> None:
        await RAISE_EVENT_CEILING.fetch_all(self.database, cid=conversation_id, last_event_id=ceiling)



def _like_pattern(q: str) -> str:
    """`q` as a LIKE pattern that matches it literally anywhere: % _ and \\ escaped."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def owned(conversation: Conversation | None) -> Conversation:
    """A conversation read as its caller's (find_owned, UserStore.holder_and_conversation),
    or ConversationNotFound: one that is not theirs is answered exactly as one that does
    not exist."""
    if conversation is None:
        raise ConversationNotFound()
    return conversation
