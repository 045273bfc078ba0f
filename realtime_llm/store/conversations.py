"""Conversations and their messages: the SQL database is the source of truth."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import sqlalchemy as sa
from databases import Database

from realtime_llm.cache import HistoryCache
from realtime_llm.errors import ConversationNotFound
from realtime_llm.keys import APIKeyBox, mask_api_key
from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.compiled import fetch_all, fetch_one
from realtime_llm.store.records import Conversation, Message, message_from_row
from realtime_llm.store.schema import conversations, messages
from realtime_llm.store.statements import (
    ADD_USAGE,
    ALL_MESSAGES,
    EVENT_CEILING,
    EXISTS,
    INSERT_MESSAGE,
    LAST_MESSAGE,
    NEWEST_MESSAGES,
    NEWEST_MESSAGES_BELOW,
    NEXT_MESSAGE_ID,
    ONE_MESSAGE,
    OWNED,
    RAISE_EVENT_CEILING,
)
from realtime_llm.usage import Usage

LIST_LIMIT_MAX = 1000


class ConversationStore:
    def __init__(self, database: Database, box: APIKeyBox, cache: HistoryCache | None = None,
                 fts: bool = False) -> None:
        self.database = database
        self.box = box
        self.cache = cache or HistoryCache()
        self.fts = fts  # SQLite's messages_fts index exists (see schema.SEARCH_SQLITE)

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
        row = await OWNED.fetch_one(self.database, cid=conversation_id, user_id=user_id)
        if row is None:
            raise ConversationNotFound()
        return Conversation(*row)

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
            return mine.where(m.c.id.in_(hits))
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
                await fetch_all(self.database, messages.delete().where(messages.c.conversation_id == conversation_id))
                await fetch_all(self.database, conversations.delete().where(conversations.c.id == conversation_id,
                                                                            conversations.c.user_id == user_id))
        await atomically(delete)
        await self.cache.drop(conversation_id)

    async def history(self, conversation: Conversation) -> list[dict[str, object]]:
        """All messages as the history route shows them: from the cache when it is current."""
        cached = await self.cache.get(conversation.id, conversation.message_count, conversation.last_message_id)
        if cached is not None:
            return cached
        messages = [row_json(r) for r in await self._all_message_rows(conversation.id)]
        await self.cache.put(conversation.id, messages)
        return messages

    async def messages(self, conversation_id: int) -> list[Message]:
        return [message_from_row(r) for r in await self._all_message_rows(conversation_id)]

    async def _all_message_rows(self, conversation_id: int) -> list[Any]:
        return await ALL_MESSAGES.fetch_all(self.database, cid=conversation_id)

    async def message(self, conversation_id: int, message_id: int) -> Message | None:
        row = await ONE_MESSAGE.fetch_one(self.database, cid=conversation_id, message_id=message_id)
        return None if row is None else message_from_row(row)

    async def last_message(self, conversation_id: int) -> Message | None:
        row = await LAST_MESSAGE.fetch_one(self.database, cid=conversation_id)
        return None if row is None else message_from_row(row)

    async def drop_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Delete that message and every later one (edit, regenerate). Ids are not reused:
        the next message gets a new one, so an id always names the same text."""
        async def drop() -> None:  # one transaction, not to be cut by a cancel
            async with self.database.transaction():
                await fetch_all(self.database, messages.delete().where(messages.c.conversation_id == conversation_id,
                                                                       messages.c.message_id >= message_id))
                remaining = sa.select(sa.func.count()).select_from(messages).where(
                    messages.c.conversation_id == conversation_id).scalar_subquery()
                await fetch_all(self.database, conversations.update().where(conversations.c.id == conversation_id)
                                .values(message_count=remaining))
        await atomically(drop)
        await self.cache.drop(conversation_id)

    async def recent_messages(self, conversation_id: int, budget_chars: int, page: int = 64,
                              below: int | None = None, with_reasoning: bool = False) -> list[Message]:
        """The newest messages (with ids under `below`, if given) whose contents fit in the
        budget (the newest always), oldest first; read a page at a time so a long
        conversation costs no more than the budget."""
        chosen: list[Message] = []
        used = 0
        before: int | None = below
        while True:
            if before is None:
                rows = await NEWEST_MESSAGES.fetch_all(self.database, cid=conversation_id, page=page)
            else:
                rows = await NEWEST_MESSAGES_BELOW.fetch_all(self.database, cid=conversation_id, page=page,
                                                             below=before)
            for r in rows:
                message = message_from_row(r)
                size = len(message.content) + (len(message.reasoning) if with_reasoning else 0)
                if chosen and used + size > budget_chars:
                    return chosen[::-1]
                chosen.append(message)
                used += size
            if len(rows) < page:
                return chosen[::-1]
            before = chosen[-1].message_id

    async def exists(self, conversation_id: int) -> bool:
        return await EXISTS.fetch_one(self.database, cid=conversation_id) is not None

    async def event_ceiling(self, conversation_id: int) -> int:
        """No event id above this has been handed out in the conversation (broker/eventids.py)."""
        return int(await EVENT_CEILING.fetch_val(self.database, cid=conversation_id) or 0)

    async def raise_event_ceiling(self, conversation_id: int, ceiling: int) -> None:
        await RAISE_EVENT_CEILING.fetch_all(self.database, cid=conversation_id, last_event_id=ceiling)

    async def add_message(self, conversation: Conversation, role: str, content: str,
                          usage: Usage | None = None, *, reasoning: str = "") -> Message:
        """Append a message; its message_id is the conversation's next, taken atomically.
        An answer's usage is added to its owner's totals in the same transaction. A
        conversation deleted meanwhile is ConversationNotFound: nothing is written."""
        now = int(time.time())
        conversation_id = conversation.id
        async def append() -> Any:  # one transaction, not to be cut by a cancel
            async with self.database.transaction():
                message_id = await NEXT_MESSAGE_ID.fetch_val(self.database, cid=conversation_id,
                                                             user_id=conversation.user_id)
                if message_id is None:
                    raise ConversationNotFound()
                await INSERT_MESSAGE.fetch_all(
                    self.database, cid=conversation_id, message_id=message_id, role=role, content=content,
                    created_time=now, prompt_tokens=usage.prompt_tokens if usage else None,
                    completion_tokens=usage.completion_tokens if usage else None,
                    usage_estimated=int(usage.estimated) if usage else 0, reasoning=reasoning,
                    reasoning_tokens=usage.reasoning_tokens if usage else None)
                if usage is not None:
                    await ADD_USAGE.fetch_all(self.database, cid=conversation_id, prompt_tokens=usage.prompt_tokens,
                                              completion_tokens=usage.completion_tokens)
            return message_id

        message_id = await atomically(append)
        message = Message(int(message_id), role, content, now, usage, reasoning)
        await self.cache.append(conversation_id, message_json(message))
        return message


def message_json(message: Message) -> dict[str, object]:
    shown: dict[str, object] = {
        "role": message.role,
        "content": message.content,
        "message_id": message.message_id,
        "created_time": message.created_time,
    }
    if message.usage is not None:
        shown["usage"] = message.usage.as_json()
    if message.role == "assistant":
        shown["reasoning"] = message.reasoning
    return shown


def row_json(row: Any) -> dict[str, object]:
    """message_json() straight from a driver row of MESSAGE_COLUMNS: the history of a long
    conversation skips building a Message per row (22 ms of 10,000, bench.history)."""
    message_id, role, content, created_time, prompt_tokens, completion_tokens, estimated, reasoning, thought = row
    shown: dict[str, object] = {"role": role, "content": content, "message_id": message_id,
                                "created_time": created_time}
    if prompt_tokens is not None and completion_tokens is not None:
        usage: dict[str, object] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                    "estimated": bool(estimated)}
        if thought is not None:
            usage["reasoning_tokens"] = thought
        shown["usage"] = usage
    if role == "assistant":
        shown["reasoning"] = reasoning
    return shown


def _like_pattern(q: str) -> str:
    """`q` as a LIKE pattern that matches it literally anywhere: % _ and \\ escaped."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
