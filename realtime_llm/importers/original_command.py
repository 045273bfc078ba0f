"""realtime-llm import-original: the Go original's users and conversations moved into this
server's database, logins and conversation ids kept (DESIGN.md, Import)."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import anyio.to_thread
import redis.asyncio as aioredis

from realtime_llm.auth import ORIGINAL
from realtime_llm.catalog import ModelCatalog
from realtime_llm.config import Settings
from realtime_llm.importers.original import (
    MAX_KEPT_ID,
    OriginalConversation,
    OriginalData,
    OriginalUser,
    Target,
    UnreadableSource,
    blob_keys,
    conversation_id,
    convert,
    kept_id,
    read_sqlite,
)
from realtime_llm.importers.records import ImportedConversation
from realtime_llm.importers.writer import ImportWriter
from realtime_llm.keys import APIKeyBox
from realtime_llm.redisclient import REDIS_FAILURES
from realtime_llm.store.database import create_database, migrate
from realtime_llm.store.users import UserStore

REDIS_TIMEOUT = 10.0
BLOBS_PER_READ = 100  # blobs a user's import holds at a time
ORIGINAL_COST = 10  # golang.org/x/crypto/bcrypt's DefaultCost, which the original used
USERNAME_COLUMN_CHARS = 64  # users.username
BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


def bcrypt_cost(hashed: object) -> int | None:
    """A well-formed bcrypt hash's cost, else None."""
    found = BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
    return int(found.group(1)) if found and 4 <= int(found.group(1)) <= 31 else None


@dataclass
class Report:
    say: Callable[[str], None]  # a line for each thing skipped, or imported with less than it had
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
                          report: Report) -> None:
    """Everything importable, a user at a time; `report` says what was done, also when a
    source fails part of the way (users imported by then stay imported)."""
    data = await anyio.to_thread.run_sync(read_sqlite, sqlite_path)
    try:
        blobs = Blobs(redis_url)
    except ValueError as exc:  # a malformed URL
        raise UnreadableSource(f"Redis: {exc}") from None
    database = create_database(settings)
    try:
        await blobs.check()
        await database.connect()
        await migrate(database)
        writer = ImportWriter(database, APIKeyBox(secret))
        importer = _Importer(settings, writer, UserStore(database), blobs, report, data)
        # Before anything is written: the ids to keep are set aside from what this server
        # hands out next, and those it has handed out are known, not to be given again.
        highest = await writer.highest_id_used()
        kept = max((cid for user in data.users for row in user.conversations
                    if (cid := conversation_id(row.key)) is not None and kept_id(cid)), default=0)
        await writer.reserve_ids(kept)
        # ... and any the server made between those two steps is not to be kept either.
        importer.taken = await writer.ids_between(highest, kept)
        importer.highest = highest
        if settings.auth.bcrypt_rounds < ORIGINAL_COST:
            report.say(f"auth.bcrypt_rounds is {settings.auth.bcrypt_rounds}, below the original's "
                       f"{ORIGINAL_COST}: a failed login as an imported user who has not logged in yet takes longer "
                       "than one as an unknown user, which tells their names apart")
        for user in data.users:
            await importer.add(user)
        for orphan in data.orphans:
            report.skipped_conversations += 1
            report.say(f"skipped conversation {orphan.key}: its user is not in the original's users table")
        if redis_url is None and report.conversations:
            report.say("no --from-redis given: every conversation was imported without its messages (running "
                       "this again with it adds none: those users are here now)")
    finally:
        await blobs.close()
        if database.is_connected:
            await database.disconnect()


class _Importer:
    def __init__(self, settings: Settings, writer: ImportWriter, users: UserStore, blobs: Blobs, report: Report,
                 data: OriginalData) -> None:
        self.settings = settings
        self.writer = writer
        self.users = users
        self.blobs = blobs
        self.report = report
        self.keys = {row.key for user in data.users for row in user.conversations} | {r.key for r in data.orphans}
        self.target = Target(settings.llm.default_model, ModelCatalog(settings.llm.providers).can_serve,
                             settings.limits.max_title_chars, settings.limits.max_api_key_chars, int(time.time()))
        self.highest = 0  # ids up to this one were handed out here before the import
        self.taken: set[int] = set()  # ... and these, by the server, as the import began
        self.seen: set[int] = set()  # ids of this run ("42" and "042" are one id here)

    async def add(self, user: OriginalUser) -> None:
        report = self.report
        problem = await self._refused(user)
        if not problem:
            counted = [0]
            try:
                written = await self.writer.add_user(user.username, ORIGINAL + user.password_hash,
                                                     self._conversations(user, counted))
            except Exception:
                if await self.users.by_username(user.username) is None:
                    raise
                problem = "the username was registered here meanwhile"
            else:
                report.users += 1
                report.conversations += len(written)
                report.messages += sum(messages for _, messages in written)
                report.skipped_conversations += counted[0]
                return
        report.skipped_users += 1
        report.skipped_conversations += len(user.conversations)
        report.say(f"skipped user {user.username!r} and their {len(user.conversations)} conversation(s): {problem}")

    async def _refused(self, user: OriginalUser) -> str:
        longest = min(self.settings.auth.max_username_length, USERNAME_COLUMN_CHARS)
        if not user.username or not user.username.isprintable():
            return "no username, or one with control characters"
        if len(user.username) > longest:
            return f"a username longer than {longest} characters"
        cost = bcrypt_cost(user.password_hash)
        if cost is None:
            return "its password hash is not bcrypt's"
        if cost > max(ORIGINAL_COST, self.settings.auth.bcrypt_rounds):
            return f"its bcrypt cost {cost} is above the original's {ORIGINAL_COST} and this server's"
        if await self.users.by_username(user.username) is not None:
            return "the username is taken here (imported before, or somebody else's)"
        return ""

    async def _conversations(self, user: OriginalUser, counted: list[int]) -> AsyncIterator[ImportedConversation]:
        """The user's conversations to write, their blobs read BLOBS_PER_READ at a time; one
        whose id cannot be kept gets a new one (nothing is lost, and a rerun adds nothing:
        the user is here then). `counted[0]`: how many were skipped."""
        wanted: list[tuple[int | None, OriginalConversation]] = []
        for row in user.conversations:
            number = conversation_id(row.key)
            if number is None:
                counted[0] += 1
                self.report.say(f"skipped conversation {row.key} of {user.username!r}: its id is not a number")
                continue
            if not kept_id(number):
                problem = f"ids here are 1 to {MAX_KEPT_ID}"
            elif number in self.seen or number <= self.highest or number in self.taken:
                problem = "the id is, or was, another conversation's here"
            else:
                self.seen.add(number)
                wanted.append((number, row))
                continue
            self.report.say(f"conversation {row.key} of {user.username!r}: its id cannot be kept ({problem}): "
                            "imported under a new one")
            wanted.append((None, row))
        for start in range(0, len(wanted), BLOBS_PER_READ):
            batch = wanted[start:start + BLOBS_PER_READ]
            blobs = await self.blobs.read([key for _, row in batch for key in blob_keys(row.key, self.keys)])
            for cid, row in batch:
                blob = next((blobs[key] for key in blob_keys(row.key, self.keys) if key in blobs), None)
                result = convert(cid, row, blob, self.target)
                if result.problem and (self.blobs.redis is not None or blob is not None):
                    self.report.say(f"conversation {row.key} of {user.username!r}: {result.problem}")
                yield result.conversation
