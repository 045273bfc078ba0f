"""API tokens for scripts and services (DESIGN.md, Programmatic and shared access): shown
once, kept only as a hash."""
from __future__ import annotations

import secrets
import time

import sqlalchemy as sa
from databases import Database

from realtime_llm.auth import API_TOKEN_PREFIX, api_token_hash
from realtime_llm.errors import BadRequest
from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.compiled import fetch_all, fetch_one
from realtime_llm.store.schema import api_tokens, users

MAX_TOKENS_PER_USER = 50


class ApiTokenStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, user_id: int, name: str, expires_in_days: int | None) -> dict[str, object]:
        """A new token of the user's; the only time its secret is seen."""
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = int(time.time())
        row = {"token_id": "tok_" + secrets.token_urlsafe(12), "name": name, "created_time": now,
               "expires_time": now + expires_in_days * 86_400 if expires_in_days else None}

        async def insert() -> None:  # one transaction, not to be cut by a cancel
            async with self.database.transaction():
                await fetch_all(self.database, sa.select(users.c.id).where(users.c.id == user_id)
                                .with_for_update(key_share=True))  # one count at a time per user
                [(count,)] = await fetch_all(self.database, sa.select(sa.func.count()).select_from(api_tokens)
                                             .where(api_tokens.c.user_id == user_id))
                if count >= MAX_TOKENS_PER_USER:
                    raise BadRequest(f"you have {MAX_TOKENS_PER_USER} API tokens already: delete one first")
                await fetch_all(self.database, api_tokens.insert().values(
                    id=row["token_id"], user_id=user_id, name=name, token_hash=api_token_hash(token),
                    created_time=now, expires_time=row["expires_time"]))

        await atomically(insert)
        return {**row, "token": token}

    async def list(self, user_id: int) -> list[dict[str, object]]:
        t = api_tokens
        rows = await fetch_all(self.database, sa.select(t.c.id, t.c.name, t.c.created_time, t.c.expires_time)
                               .where(t.c.user_id == user_id).order_by(t.c.created_time, t.c.id))
        return [{"token_id": token_id, "name": name, "created_time": created, "expires_time": expires}
                for token_id, name, created, expires in rows]

    async def delete(self, token_id: str, user_id: int) -> bool:
        """The user's token of that id is gone; False if there was none."""
        gone = await fetch_one(self.database, api_tokens.delete().where(
            api_tokens.c.id == token_id, api_tokens.c.user_id == user_id).returning(api_tokens.c.id))
        return gone is not None
