"""Conversations and their messages: the SQL database is the source of truth."""
from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from databases import Database

from realtime_llm.cache import HistoryCache
from realtime_llm.errors import ConversationNotFound
from realtime_llm.keys import APIKeyBox, mask_api_key
from realtime_llm.store.schema import conversations, messages


@dataclass(frozen=True)
class Conversation:
    id: int
    user_id: int
    title: str
    model: str
    system_prompt: str
    api_key_sealed: str
    api_key_hint: str
    created_time: int
    last_message_id: int = 0
    last_event_id: int = 0


@dataclass(frozen=True)
class Message:
    message_id: int
    role: str
    content: str
    created_time: int


class ConversationStore:
    def __init__(self, database: Database, box: APIKeyBox, cache: HistoryCache | None = None) -> None:
        self.database = database
        self.box = box
        self.cache = cache or HistoryCache()

    async def create(
        self, user_id: int, *, title: str, model: str, system_prompt: str, api_key: str
    ) -> Conversation:
        values = dict(
            user_id=user_id,
            title=title,
            model=model,
            system_prompt=system_prompt,
            api_key_sealed=self.box.seal(api_key),
            api_key_hint=mask_api_key(api_key),
            created_time=int(time.time()),
        )
        conversation_id = await self.database.execute(conversations.insert().values(**values))
        return Conversation(id=int(conversation_id), **values)  # type: ignore[arg-type]

    async def get_owned(self, conversation_id: int, user_id: int) -> Conversation:
        """The conversation if this user owns it; otherwise exactly as if it did not exist."""
        row = await self.database.fetch_one(
            sa.select(conversations).where(
                conversations.c.id == conversation_id, conversations.c.user_id == user_id
            )
        )
        if row is None:
            raise ConversationNotFound()
        m = row._mapping
        return Conversation(**{f: m[f] for f in Conversation.__dataclass_fields__})

    async def list_for_user(self, user_id: int) -> list[dict[str, object]]:
        rows = await self.database.fetch_all(
            sa.select(conversations.c.id, conversations.c.title, conversations.c.created_time)
            .where(conversations.c.user_id == user_id)
            .order_by(conversations.c.id.desc())
        )
        return [
            {"conversation_id": r["id"], "title": r["title"], "created_time": r["created_time"]}
            for r in rows
        ]

    async def delete_owned(self, conversation_id: int, user_id: int) -> None:
        async with self.database.transaction():
            await self.get_owned(conversation_id, user_id)
            await self.database.execute(messages.delete().where(messages.c.conversation_id == conversation_id))
            await self.database.execute(conversations.delete().where(conversations.c.id == conversation_id))
        await self.cache.drop(conversation_id)

    async def history(self, conversation: Conversation) -> list[dict[str, object]]:
        """All messages as the history route shows them: from the cache when it is current."""
        cached = await self.cache.get(conversation.id, conversation.last_message_id)
        if cached is not None:
            return cached
        messages = [message_json(m) for m in await self.messages(conversation.id)]
        await self.cache.put(conversation.id, messages)
        return messages  # type: ignore[return-value]

    async def messages(self, conversation_id: int) -> list[Message]:
        rows = await self.database.fetch_all(
            sa.select(messages.c.message_id, messages.c.role, messages.c.content, messages.c.created_time)
            .where(messages.c.conversation_id == conversation_id)
            .order_by(messages.c.message_id)
        )
        return [Message(r["message_id"], r["role"], r["content"], r["created_time"]) for r in rows]

    async def recent_messages(self, conversation_id: int, budget_chars: int, page: int = 64) -> list[Message]:
        """The newest messages whose contents fit in the budget (the newest always), oldest
        first; read a page at a time so a long conversation costs no more than the budget."""
        chosen: list[Message] = []
        used = 0
        before: int | None = None
        while True:
            query = (
                sa.select(messages.c.message_id, messages.c.role, messages.c.content, messages.c.created_time)
                .where(messages.c.conversation_id == conversation_id)
                .order_by(messages.c.message_id.desc())
                .limit(page)
            )
            if before is not None:
                query = query.where(messages.c.message_id < before)
            rows = await self.database.fetch_all(query)
            for r in rows:
                if chosen and used + len(r["content"]) > budget_chars:
                    return chosen[::-1]
                chosen.append(Message(r["message_id"], r["role"], r["content"], r["created_time"]))
                used += len(r["content"])
            if len(rows) < page:
                return chosen[::-1]
            before = rows[-1]["message_id"]

    async def exists(self, conversation_id: int) -> bool:
        row = await self.database.fetch_one(sa.select(conversations.c.id).where(conversations.c.id == conversation_id))
        return row is not None

    async def event_watermark(self, conversation_id: int) -> int:
        value = await self.database.fetch_val(
            sa.select(conversations.c.last_event_id).where(conversations.c.id == conversation_id)
        )
        return int(value or 0)

    async def save_event_watermark(self, conversation_id: int, last_event_id: int) -> None:
        await self.database.execute(
            conversations.update()
            .where(conversations.c.id == conversation_id, conversations.c.last_event_id < last_event_id)
            .values(last_event_id=last_event_id)
        )

    async def add_message(self, conversation_id: int, role: str, content: str) -> Message:
        """Append a message; its message_id is the conversation's next, taken atomically."""
        now = int(time.time())
        async with self.database.transaction():
            await self.database.execute(
                conversations.update()
                .where(conversations.c.id == conversation_id)
                .values(last_message_id=conversations.c.last_message_id + 1)
            )
            message_id = await self.database.fetch_val(
                sa.select(conversations.c.last_message_id).where(conversations.c.id == conversation_id)
            )
            if message_id is None:
                raise ConversationNotFound()
            await self.database.execute(
                messages.insert().values(
                    conversation_id=conversation_id,
                    message_id=message_id,
                    role=role,
                    content=content,
                    created_time=now,
                )
            )
        message = Message(int(message_id), role, content, now)
        await self.cache.append(conversation_id, message_json(message))
        return message


def message_json(message: Message) -> dict[str, object]:
    return {
        "role": message.role,
        "content": message.content,
        "message_id": message.message_id,
        "created_time": message.created_time,
    }
