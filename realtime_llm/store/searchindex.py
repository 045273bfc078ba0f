"""SQLite's message search index, written behind the messages (schema.SEARCH_SQLITE_BEHIND).

Written by a trigger in the transaction that adds a message, the FTS5 index cost that
transaction about 90 µs of CPU on this machine, most of it the new segment each commit
writes; a turn adds two messages, and that was about 7 % of the server's CPU relaying
50-token answers (bench.relay_cpu's load, an A/B with the trigger dropped). Now the
trigger only notes a new message's id in messages_fts_pending, and every process indexes
what is noted every second, in batches of up to CHUNK (twenty at a time already cost
about 18 µs a message: a throwaway timing of both ways with sqlite3). Their transactions
take turns; a process that finds nothing noted writes nothing.

A search stays a read: it matches the index and scans the noted messages by id (about a
second's worth while the rounds keep up; ConversationStore._conversations_mentioning).
Deleting or changing a message takes it out of the index at once, or out of the notes
when it is not indexed yet (the triggers). A rebuild of messages_fts ('rebuild') indexes
every message: it must empty the notes in the same transaction, or the next round
indexes those twice.
"""
from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa
from databases import Database

from realtime_llm.store.compiled import Compiled, Script, transaction
from realtime_llm.tasks import every, stop_task

logger = logging.getLogger("realtime_llm.store")

INTERVAL_SECONDS = 1.0
# One transaction indexes at most this many messages, and at most this many characters
# (but always its first message): a backlog (an import: its texts are not bounded by
# max_message_chars) goes in steps, each a short hold of the write lock, with a pause
# between them in which writers waiting in SQLite's busy handler (which sleeps up to
# 100 ms between tries) get the lock.
CHUNK = 500
CHUNK_CHARS = 1_000_000
STEP_PAUSE_SECONDS = 0.1

LAST_NOTED = Compiled(sa.text("SELECT max(id) FROM messages_fts_pending"))
NOTED = Compiled(sa.text("SELECT p.id, length(m.content) FROM messages_fts_pending p "  # (a note of no message:
                         "LEFT JOIN messages m ON m.id = p.id "  # forgotten with the rest)
                         "WHERE p.id <= :target ORDER BY p.id LIMIT :chunk"))
INDEX = Compiled(sa.text("INSERT INTO messages_fts (rowid, content) SELECT m.id, m.content "
                         "FROM messages_fts_pending p JOIN messages m ON m.id = p.id WHERE p.id <= :last"))
FORGET = Compiled(sa.text("DELETE FROM messages_fts_pending WHERE id <= :last"))


class SearchIndex:
    def __init__(self, database: Database, interval: float = INTERVAL_SECONDS) -> None:
        self.database = database
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(every(self.interval, self.catch_up, "could not update the search index",
                                               logger), name="search-index")

    async def close(self) -> None:
        await stop_task(self._task)

    async def catch_up(self) -> int:
        """Index the messages noted before this call (those noted meanwhile wait for the
        next); how many were indexed."""
        target = await LAST_NOTED.fetch_val(self.database)  # a read: no write lock for nothing
        if target is None:
            return 0
        done, more = 0, True
        while more:
            indexed, more = await transaction(self.database, lambda: _index_some(target))
            done += indexed
            if more:
                await asyncio.sleep(STEP_PAUSE_SECONDS)
        if done > CHUNK:
            logger.info("indexed a backlog of %d messages for search", done)
        return done


def _index_some(target: int) -> Script[tuple[int, bool]]:
    """Index the oldest noted messages up to `target`, within CHUNK and CHUNK_CHARS: (how
    many, whether any up to `target` are left)."""
    rows = yield NOTED.bind(target=target, chunk=CHUNK)
    if not rows:
        return 0, False
    taken, chars = 1, rows[0][1] or 0
    while taken < len(rows) and chars + (rows[taken][1] or 0) <= CHUNK_CHARS:
        chars += rows[taken][1] or 0
        taken += 1
    last = rows[taken - 1][0]
    yield INDEX.bind(last=last)
    yield FORGET.bind(last=last)
    return taken, last < target
