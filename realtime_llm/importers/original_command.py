"""realtime-llm import-original: the Go original's users and conversations moved into this
server's database, logins and conversation ids kept (DESIGN.md, Import)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import anyio.to_thread
import redis.asyncio as aioredis

from realtime_llm.auth import ORIGINAL
from realtime_llm.config import Settings
from realtime_llm.importers.original import (
    OriginalUser,
    UnreadableSource,
    blob_keys,
    conversation_id,
    convert,
    read_sqlite,
)
from realtime_llm.importers.writer import ImportedConversation, ImportWriter
from realtime_llm.keys import APIKeyBox
from realtime_llm.redisclient import REDIS_FAILURES
from realtime_llm.store.database import create_database, migrate
from realtime_llm.store.users import UserStore

REDIS_TIMEOUT = 10.0
BLOBS_PER_READ = 500


@dataclass
class Report:
    users: int = 0
    conversations: int = 0
    messages: int = 0
    skipped_users: int = 0
    skipped_conversations: int = 0

    def summary(self) -> str:
        return (f"imported {self.users} users, {self.conversations} conversations, {self.messages} messages; "
                f"skipped {self.skipped_users} users, {self.skipped_conversations} conversations")


class Blobs:
    """The original's Redis, read a user's conversations at a time; without one, nothing."""

    def __init__(self, url: str | None) -> None:
        self.redis = aioredis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT) \
            if url else None

    async def check(self) -> None:
        if self.redis is not None:
            try:
                await self.redis.ping()
            except REDIS_FAILURES as exc:
                raise UnreadableSource(f"Redis: {exc}") from None

    async def read(self, keys: list[str]) -> dict[str, bytes]:
        if self.redis is None or not keys:
            return {}
        found: dict[str, bytes] = {}
        try:
            for start in range(0, len(keys), BLOBS_PER_READ):
                batch = keys[start:start + BLOBS_PER_READ]
                values = await self.redis.mget(batch)
                found.update((k, v) for k, v in zip(batch, values, strict=True) if isinstance(v, bytes))
        except REDIS_FAILURES as exc:
            raise UnreadableSource(f"Redis: {exc}") from None
        return found

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


async def import_original(settings: Settings, secret: str, sqlite_path: str, redis_url: str | None,
                          say: Callable[[str], None]) -> Report:
    data = await anyio.to_thread.run_sync(read_sqlite, sqlite_path)
    blobs = Blobs(redis_url)
    database = create_database(settings)
    report = Report()
    try:
        await blobs.check()
        await database.connect()
        await migrate(database)
        importer = _Importer(settings, ImportWriter(database, APIKeyBox(secret)), UserStore(database), blobs,
                             report, say)
        await importer.start()
        for user in data.users:
            await importer.add(user)
        for orphan in data.orphans:
            report.skipped_conversations += 1
            say(f"skipped conversation {orphan.key}: its user is not in the original's users table")
        if redis_url is None and report.conversations:
            say("no --from-redis given: every conversation was imported without its messages")
    finally:
        await blobs.close()
        if database.is_connected:
            await database.disconnect()
    return report


class _Importer:
    def __init__(self, settings: Settings, writer: ImportWriter, users: UserStore, blobs: Blobs,
                 report: Report, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.writer = writer
        self.users = users
        self.blobs = blobs
        self.report = report
        self.say = say
        self.highest = 0
        self.seen: set[int] = set()  # ids of this run ("42" and "042" are one id here)

    async def start(self) -> None:
        self.highest = await self.writer.highest_id_used()

    async def add(self, user: OriginalUser) -> None:
        report = self.report
        problem = await self._refused(user)
        if problem:
            report.skipped_users += 1
            report.skipped_conversations += len(user.conversations)
            self.say(f"skipped user {user.username!r} and their {len(user.conversations)} "
                                f"conversation(s): {problem}")
            return
        conversations = await self._conversations(user)
        await self.writer.add_user(user.username, ORIGINAL + user.password_hash, conversations)
        report.users += 1
        report.conversations += len(conversations)
        report.messages += sum(len(c.messages) for c in conversations)

    async def _refused(self, user: OriginalUser) -> str:
        if not isinstance(user.username, str) or not user.username:
            return "no username"
        if len(user.username) > self.settings.auth.max_username_length:
            return f"a username longer than {self.settings.auth.max_username_length} characters"
        if not isinstance(user.password_hash, str) or not user.password_hash.startswith("$2") \
                or len(user.password_hash) != 60:
            return "its password hash is not bcrypt's"
        if await self.users.by_username(user.username) is not None:
            return "the username is taken here (imported before, or somebody else's)"
        return ""

    async def _conversations(self, user: OriginalUser) -> list[ImportedConversation]:
        ids = {row.key: conversation_id(row.key) for row in user.conversations}
        taken = await self.writer.taken([cid for cid in ids.values() if cid is not None])
        wanted = []
        for row in user.conversations:
            cid = ids[row.key]
            if cid is None:
                problem = "its id is not a number from 1 to 2**53 - 1"
            elif cid in taken or cid in self.seen:
                problem = "the id is taken here"
            elif cid <= self.highest:
                problem = "the id was handed out here before (to a conversation deleted since)"
            else:
                self.seen.add(cid)
                wanted.append((cid, row))
                continue
            self.report.skipped_conversations += 1
            self.say(f"skipped conversation {row.key} of {user.username!r}: {problem}")
        blobs = await self.blobs.read([key for _, row in wanted for key in blob_keys(row.key)])
        now = int(time.time())
        converted = []
        for cid, row in wanted:
            blob = next((blobs[key] for key in blob_keys(row.key) if key in blobs), None)
            result = convert(cid, row, blob, self.settings.llm.default_model, self.settings.limits.max_title_chars,
                             now)
            if result.problem and self.blobs.redis is not None:
                self.say(f"conversation {cid} of {user.username!r}: {result.problem}")
            converted.append(result.conversation)
        return converted
