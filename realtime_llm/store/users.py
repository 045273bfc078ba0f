"""Users and revoked tokens."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from databases import Database

from realtime_llm.auth import API_JTI, NEVER, TokenClaims, api_token_hash
from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.compiled import Compiled, fetch_all, fetch_one
from realtime_llm.store.records import Conversation
from realtime_llm.store.schema import api_tokens, conversations, revoked_tokens, users
from realtime_llm.store.statements import CONVERSATION_COLUMNS
from realtime_llm.usage import Usage


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password_hash: str
    created_time: int
    session_epoch: int = 0  # login tokens of an earlier epoch are dead
    password_change_required: bool = False  # an imported password shorter than today's minimum


class UsernameTaken(Exception):
    pass


# Every authenticated request: the user a login token names, unless that token was revoked
# or the user's sessions were all ended since it was issued; or the owner of an API token.
USER_COLUMNS = (users.c.id, users.c.username, users.c.password_hash, users.c.created_time, users.c.session_epoch,
                users.c.password_change_required)
_active = (users.c.id == sa.bindparam("user_id"), users.c.session_epoch == sa.bindparam("epoch"),
           ~sa.exists().where(revoked_tokens.c.jti == sa.bindparam("jti")))
ACTIVE_USER = Compiled(sa.select(*USER_COLUMNS).where(*_active))
# ... and, in the same query, a conversation of theirs (NULLs if it is not theirs, or gone).
ACTIVE_USER_AND_CONVERSATION = Compiled(
    sa.select(*USER_COLUMNS, *CONVERSATION_COLUMNS)
    .select_from(users.outerjoin(conversations, sa.and_(conversations.c.id == sa.bindparam("cid"),
                                                         conversations.c.user_id == users.c.id)))
    .where(*_active))
_live = sa.or_(api_tokens.c.expires_time.is_(None), api_tokens.c.expires_time > sa.bindparam("now"))
API_TOKEN_OWNER = Compiled(
    sa.select(*USER_COLUMNS, api_tokens.c.id, api_tokens.c.expires_time).join_from(
        api_tokens, users, users.c.id == api_tokens.c.user_id)
    .where(api_tokens.c.token_hash == sa.bindparam("token_hash"), _live))
API_TOKEN_HOLDER = Compiled(
    sa.select(*USER_COLUMNS).join_from(api_tokens, users, users.c.id == api_tokens.c.user_id)
    .where(api_tokens.c.id == sa.bindparam("token_id"), _live))


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

    async def holder(self, claims: TokenClaims) -> User | None:
        """The user a checked token still speaks for: one query per request. None for a
        revoked or deleted token, a session ended since, or a user gone."""
        if claims.api_token:
            row = await API_TOKEN_HOLDER.fetch_one(self.database, token_id=claims.token_id, now=int(time.time()))
        else:
            row = await ACTIVE_USER.fetch_one(self.database, user_id=claims.user_id, jti=claims.jti,
                                              epoch=claims.epoch)
        return None if row is None else User(*row)

    async def holder_and_conversation(self, claims: TokenClaims,
                                      conversation_id: int) -> tuple[User | None, Conversation | None]:
        """holder() of a login token (not an API token's), and the conversation if that
        user owns it (None if not, or gone), in one query: a chat turn needs both, and on
        SQLite every query is a hop to its thread and back."""
        row = await ACTIVE_USER_AND_CONVERSATION.fetch_one(self.database, user_id=claims.user_id, jti=claims.jti,
                                                           epoch=claims.epoch, cid=conversation_id)
        if row is None:
            return None, None
        columns = len(USER_COLUMNS)
        return User(*row[:columns]), None if row[columns] is None else Conversation(*row[columns:])

    async def api_token(self, token: str) -> tuple[User, TokenClaims] | None:
        """The owner of an API token and its claims; None for an unknown, deleted or expired one."""
        row = await API_TOKEN_OWNER.fetch_one(self.database, token_hash=api_token_hash(token), now=int(time.time()))
        if row is None:
            return None
        columns = len(USER_COLUMNS)
        user = User(*row[:columns])
        token_id, expires = row[columns:]
        return user, TokenClaims(user.id, API_JTI + token_id, expires or NEVER, api_token=True)

    async def change_password(self, user_id: int, old_hash: str, password_hash: str) -> int | None:
        """A new password, if the old one is still `old_hash` (a change made meanwhile wins),
        and every login session ended; the new session epoch, or None."""
        return await self._new_epoch(users.c.password_hash == old_hash, user_id, password_hash=password_hash,
                                     password_change_required=0)

    async def replace_hash(self, user_id: int, old_hash: str, password_hash: str, change_required: bool) -> None:
        """An imported hash replaced by one of ours at its user's login (sessions stay), if
        it is still `old_hash`; `change_required` when the password is shorter than allowed."""
        await fetch_all(self.database, users.update().where(users.c.id == user_id, users.c.password_hash == old_hash)
                        .values(password_hash=password_hash, password_change_required=int(change_required)))

    async def end_sessions(self, user_id: int) -> int:
        """Every login session of the user ended (API tokens stay); the new session epoch."""
        return await self._new_epoch(sa.true(), user_id) or 0

    async def _new_epoch(self, condition: Any, user_id: int, **values: str | int) -> int | None:
        row = await fetch_one(self.database, users.update().where(users.c.id == user_id, condition).values(
            session_epoch=users.c.session_epoch + 1, sessions_ended_at=time.time(), **values)
            .returning(users.c.session_epoch))
        return None if row is None else int(row[0])

    async def sessions_ended_since(self, since: float) -> dict[int, int]:
        """Users whose sessions were ended at `since` or later, with their epoch now."""
        rows = await fetch_all(self.database, sa.select(users.c.id, users.c.session_epoch)
                               .where(users.c.sessions_ended_at >= since))
        return {int(user_id): int(epoch) for user_id, epoch in rows}


    async def add_usage(self, user_id: int, usage: Usage) -> None:
        """Tokens of an answer given outside any conversation (the /v1 façade's relays)."""
        await fetch_all(self.database, users.update().where(users.c.id == user_id).values(
            prompt_tokens=users.c.prompt_tokens + usage.prompt_tokens,
            completion_tokens=users.c.completion_tokens + usage.completion_tokens))

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
