"""Users and revoked tokens."""
from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from databases import Database

from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.compiled import Compiled, fetch_all, fetch_one
from realtime_llm.store.schema import revoked_tokens, users


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password_hash: str
    created_time: int


class UsernameTaken(Exception):
    pass


# Every authenticated request: the user a token names, unless that token was revoked.
USER_COLUMNS = (users.c.id, users.c.username, users.c.password_hash, users.c.created_time)
ACTIVE_USER = Compiled(
    sa.select(*USER_COLUMNS)
    .where(users.c.id == sa.bindparam("user_id"),
           ~sa.exists().where(revoked_tokens.c.jti == sa.bindparam("jti"))))


class UserStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, username: str, password_hash: str) -> User:
        now = int(time.time())
        # Check, then insert: the unique index still decides a race, and its violation
        # is recognised portably by re-checking rather than by driver-specific errors.
        if await self.by_username(username) is not None:
            raise UsernameTaken(username)
        try:
            [(user_id,)] = await fetch_all(self.database, users.insert().returning(users.c.id).values(
                username=username, password_hash=password_hash, created_time=now))
        except Exception:
            if await self.by_username(username) is not None:
                raise UsernameTaken(username) from None
            raise
        return User(id=int(user_id), username=username, password_hash=password_hash, created_time=now)

    async def by_username(self, username: str) -> User | None:
        row = await fetch_one(self.database, sa.select(*USER_COLUMNS).where(users.c.username == username))
        return None if row is None else User(*row)

    async def active(self, user_id: int, jti: str) -> User | None:
        """The user a token names, unless that token was revoked: one query per request."""
        row = await ACTIVE_USER.fetch_one(self.database, user_id=user_id, jti=jti)
        return None if row is None else User(*row)


    async def usage(self, user_id: int) -> dict[str, int]:
        """Tokens of all this user's answers, deleted conversations included."""
        row = await fetch_one(self.database,
                              sa.select(users.c.prompt_tokens, users.c.completion_tokens).where(users.c.id == user_id))
        prompt, completion = (int(row[0]), int(row[1])) if row is not None else (0, 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion}


class RevocationStore:
    """Token ids revoked by logout, kept until the token would have expired anyway."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def revoke(self, jti: str, expires_at: int) -> None:
        async def insert() -> None:  # one transaction, not to be cut by a cancel
            async with self.database.transaction():
                if not await self.is_revoked(jti):
                    await fetch_all(self.database, revoked_tokens.insert().values(
                        jti=jti, expires_at=expires_at, revoked_at=time.time()))
                await fetch_all(self.database,
                                revoked_tokens.delete().where(revoked_tokens.c.expires_at < int(time.time())))
        try:
            await atomically(insert)
        except Exception:
            if not await self.is_revoked(jti):  # a concurrent logout of the same token won the insert
                raise

    async def is_revoked(self, jti: str) -> bool:
        return await fetch_one(self.database, sa.select(revoked_tokens.c.jti).where(revoked_tokens.c.jti == jti)) \
            is not None

    async def revoked_since(self, since: float) -> set[str]:
        """Token ids revoked at `since` or later (by this machine's clock or another's)."""
        rows = await fetch_all(self.database,
                               sa.select(revoked_tokens.c.jti).where(revoked_tokens.c.revoked_at >= since))
        return {row[0] for row in rows}
