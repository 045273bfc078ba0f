"""Read-only share links of conversations (DESIGN.md, Programmatic and shared access)."""
from __future__ import annotations

import secrets
import time

import sqlalchemy as sa
from databases import Database

from realtime_llm.store.compiled import fetch_all, fetch_one
from realtime_llm.store.records import Conversation
from realtime_llm.store.schema import conversations, shares


class ShareStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def share(self, conversation: Conversation) -> str:
        """The conversation's share id: the one it has, else a new one."""
        existing = await self._of(conversation.id)
        if existing is not None:
            return existing
        share_id = "shr_" + secrets.token_urlsafe(18)
        try:
            await fetch_all(self.database, shares.insert().values(
                id=share_id, conversation_id=conversation.id, created_time=int(time.time())))
        except Exception:
            existing = await self._of(conversation.id)  # shared at the same moment elsewhere: that one
            if existing is None:
                raise
            return existing
        return share_id

    async def unshare(self, conversation: Conversation) -> str | None:
        """Its share removed; the id it had, if any."""
        gone = await fetch_one(self.database, shares.delete().where(shares.c.conversation_id == conversation.id)
                               .returning(shares.c.id))
        return None if gone is None else str(gone[0])

    async def shared(self, share_id: str) -> tuple[int, int] | None:
        """(conversation id, owner id) of a share link; None for an unknown or removed one."""
        row = await fetch_one(self.database, sa.select(conversations.c.id, conversations.c.user_id).join_from(
            shares, conversations, conversations.c.id == shares.c.conversation_id).where(shares.c.id == share_id))
        return None if row is None else (int(row[0]), int(row[1]))

    async def shared_id(self, conversation: Conversation) -> str | None:
        return await self._of(conversation.id)

    async def _of(self, conversation_id: int) -> str | None:
        row = await fetch_one(self.database, sa.select(shares.c.id).where(shares.c.conversation_id == conversation_id))
        return None if row is None else str(row[0])
