"""Conversations and their messages: the SQL database is the source of truth."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import sqlalchemy as sa
from databases import Database

from realtime_llm.cache import HistoryCache
from realtime_llm.errors import ConversationNotFound, PayloadTooLarge
from realtime_llm.keys import APIKeyBox, mask_api_key
from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.compiled import fetch_all, fetch_one
from realtime_llm.store.files import FileStore, StoredFile, attach
from realtime_llm.store.records import Conversation, Message, message_from_row
from realtime_llm.store.schema import conversations, messages
from realtime_llm.store.shapes import branch_json, message_json
from realtime_llm.store.statements import (
    ACTIVE_LEAF,
    ACTIVE_LEAF_FOR_UPDATE,
    ADD_USAGE,
    ALL_MESSAGES,
    CHILDREN,
    COPY_PATH,
    COPY_PATH_FILES,
    EVENT_CEILING,
    EXISTS,
    INSERT_MESSAGE,
    MOVE_LEAF,
    NEXT_MESSAGE_ID,
    ONE_MESSAGE,
    OWNED,
    PATH_LENGTH,
    PATH_UP,
    RAISE_EVENT_CEILING,
    SKELETON,
)
from realtime_llm.store.tree import Tree
from realtime_llm.usage import Usage

LIST_LIMIT_MAX = 1000
IMAGE_COST_CHARS = 4_000  # what an image counts for in the prompt budget (about 1,000 tokens)
PROMPT_IMAGE_BYTES = 20 * 1024 * 1024  # images a prompt carries at most, in bytes (base64 adds a third)
FORK_MAX_MESSAGES = 10_000  # a fork writes a whole branch: bounded, like every write


class ConversationStore:
    def __init__(self, database: Database, box: APIKeyBox, cache: HistoryCache | None = None,
                 fts: bool = False, files: FileStore | None = None) -> None:
        self.database = database
        self.box = box
        self.cache = cache or HistoryCache()
        self.fts = fts  # SQLite's messages_fts index exists (see schema.SEARCH_SQLITE)
        self.files = files or FileStore(database)

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
        await self.cache.drop(conversation_id)

    async def history(self, conversation: Conversation) -> list[dict[str, object]]:
        """The active branch as the history route shows it: from the cache when it is current."""
        cid, count, leaf = conversation.id, conversation.message_count, conversation.active_leaf_id
        cached = await self.cache.get(cid, count, leaf)
        if cached is not None:
            return cached
        rows = await ALL_MESSAGES.fetch_all(self.database, cid=cid)
        messages = branch_json(rows, leaf, await self.files.of_messages(cid))
        await self.cache.put(cid, count, leaf, messages)
        return messages

    async def messages(self, conversation_id: int) -> list[Message]:
        """Every message of every branch, in id order, with the files each carries."""
        carried = await self.files.of_messages(conversation_id)
        return [dataclasses.replace(m, attachments=tuple(carried.get(m.message_id, ())))
                for m in map(message_from_row, await ALL_MESSAGES.fetch_all(self.database, cid=conversation_id))]

    async def attachments(self, conversation_id: int, message_id: int) -> list[StoredFile]:
        return (await self.files.of_messages(conversation_id, [message_id])).get(message_id, [])

    async def message(self, conversation_id: int, message_id: int) -> Message | None:
        row = await ONE_MESSAGE.fetch_one(self.database, cid=conversation_id, message_id=message_id)
        return None if row is None else message_from_row(row)

    async def tree(self, conversation_id: int) -> Tree:
        return Tree(await SKELETON.fetch_all(self.database, cid=conversation_id))  # type: ignore[arg-type]

    async def active_leaf(self, conversation: Conversation) -> int:
        """Where the active branch ends now (0: no messages); read afresh, not from `conversation`."""
        leaf = await ACTIVE_LEAF.fetch_val(self.database, cid=conversation.id, user_id=conversation.user_id)
        if leaf is None:
            raise ConversationNotFound()
        return int(leaf)

    async def move_leaf(self, conversation: Conversation, expected: int, leaf: int) -> bool:
        """Make the branch ending at `leaf` the active one, if it still ends at `expected`."""
        moved = await MOVE_LEAF.fetch_one(self.database, cid=conversation.id, user_id=conversation.user_id,
                                          expected=expected, leaf=leaf)
        return moved is not None

    async def recent_messages(self, conversation_id: int, budget_chars: int, leaf: int, page: int = 64,
                              with_reasoning: bool = False) -> list[Message]:
        """The newest messages of the branch ending at `leaf` whose contents (files
        included: their text, IMAGE_COST_CHARS an image) fit in the budget, and whose images
        in PROMPT_IMAGE_BYTES (the newest always), oldest first, each whole with its files;
        read a page at a time up the branch, so a long conversation costs no more than the
        budget."""
        chosen: list[Message] = []
        used = images = 0
        start = leaf
        while start:
            rows = await PATH_UP.fetch_all(self.database, cid=conversation_id, start=start, page=page)
            carried = await self.files.of_messages(conversation_id, [r[0] for r in rows if r[1] == "user"])
            for r in rows:
                message = dataclasses.replace(message_from_row(r), attachments=tuple(carried.get(r[0], ())))
                size = len(message.content) + (len(message.reasoning) if with_reasoning else 0) + sum(
                    IMAGE_COST_CHARS if f.is_image else len(f.name) + f.text_chars for f in message.attachments)
                pixels = sum(f.size for f in message.attachments if f.is_image)
                if chosen and (used + size > budget_chars or images + pixels > PROMPT_IMAGE_BYTES):
                    return await self._with_contents(conversation_id, chosen[::-1])
                chosen.append(message)
                used += size
                images += pixels
            start = chosen[-1].parent_id if len(rows) == page else 0
        return await self._with_contents(conversation_id, chosen[::-1])

    async def _with_contents(self, conversation_id: int, chosen: list[Message]) -> list[Message]:
        """The messages with what a model reads of their files: loaded only for those sent."""
        carrying = [m.message_id for m in chosen if m.attachments]
        if not carrying:
            return chosen
        full = await self.files.of_messages(conversation_id, carrying, contents=True)
        return [dataclasses.replace(m, attachments=tuple(full.get(m.message_id, ()))) if m.attachments else m
                for m in chosen]

    async def exists(self, conversation_id: int) -> bool:
        return await EXISTS.fetch_one(self.database, cid=conversation_id) is not None

    async def event_ceiling(self, conversation_id: int) -> int:
        """No event id above this has been handed out in the conversation (broker/eventids.py)."""
        return int(await EVENT_CEILING.fetch_val(self.database, cid=conversation_id) or 0)

    async def raise_event_ceiling(self, conversation_id: int, ceiling: int) -> None:
        await RAISE_EVENT_CEILING.fetch_all(self.database, cid=conversation_id, last_event_id=ceiling)

    async def add_message(self, conversation: Conversation, role: str, content: str,
                          usage: Usage | None = None, *, reasoning: str = "", parent_id: int | None = None,
                          attachments: Sequence[StoredFile] = ()) -> Message:
        """Add a message under `parent_id` (by default: at the end of the active branch),
        carrying `attachments` (files of the conversation's owner), and make the branch
        ending with it the active one. Its message_id is the conversation's next, taken
        atomically. An answer's usage is added to its owner's totals in the same
        transaction. A conversation deleted meanwhile is ConversationNotFound: nothing is written."""
        now = int(time.time())
        cid, user_id = conversation.id, conversation.user_id

        async def append() -> tuple[int, int, int, list[int]]:  # one transaction, not to be cut by a cancel
            async with self.database.transaction():
                leaf = await ACTIVE_LEAF_FOR_UPDATE.fetch_val(self.database, cid=cid, user_id=user_id)
                numbered = await NEXT_MESSAGE_ID.fetch_one(self.database, cid=cid, user_id=user_id)
                if leaf is None or numbered is None:
                    raise ConversationNotFound()
                message_id, count = numbered
                parent = leaf if parent_id is None else parent_id
                await INSERT_MESSAGE.fetch_all(
                    self.database, cid=cid, message_id=message_id, role=role, content=content,
                    created_time=now, prompt_tokens=usage.prompt_tokens if usage else None,
                    completion_tokens=usage.completion_tokens if usage else None,
                    usage_estimated=int(usage.estimated) if usage else 0, reasoning=reasoning,
                    reasoning_tokens=usage.reasoning_tokens if usage else None, parent_id=parent)
                await attach(self.database, cid, user_id, message_id, [f.file_id for f in attachments])
                # The active leaf has no children (NEXT_MESSAGE_ID and MOVE_LEAF see to it): a
                # message after it is an only child.
                siblings = [message_id] if parent == leaf else [
                    row[0] for row in await CHILDREN.fetch_all(self.database, cid=cid, parent=parent)]
                if usage is not None:
                    await ADD_USAGE.fetch_all(self.database, cid=cid, prompt_tokens=usage.prompt_tokens,
                                              completion_tokens=usage.completion_tokens)
            return int(message_id), int(count), int(parent), siblings

        message_id, count, parent, siblings = await atomically(append)
        message = Message(message_id, role, content, now, usage, reasoning, parent, tuple(attachments))
        await self.cache.append(cid, message_json(message, siblings), count, parent)
        return message


def _like_pattern(q: str) -> str:
    """`q` as a LIKE pattern that matches it literally anywhere: % _ and \\ escaped."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
