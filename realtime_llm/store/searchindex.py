"""SQLite's message search index, written behind the messages (schema.SEARCH_SQLITE_BEHIND).

Written by a trigger in the transaction that adds a message, the FTS5 index cost that
transaction about 90 µs of CPU on this machine, most of it the new segment each commit
writes; a turn adds two messages, and that was about 7 % of the server's CPU relaying
50-token answers (bench.relay_cpu's load, an A/B with the trigger dropped). Now the
trigger only notes a new message's id in messages_fts_pending, and this indexes what is
noted in batches: every second in the background, and before every search, so that a
search finds every message written before it. Twenty at a time, a message costs about
18 µs to index (a throwaway timing of both ways with sqlite3).

Deleting or changing a message still takes it out of the index at once, or out of the
notes when it is not indexed yet (the triggers). Every process indexes; their
transactions take turns, and a process that finds nothing noted writes nothing.
"""
from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa
from databases import Database

from realtime_llm.store.compiled import Compiled, Script, transaction
from realtime_llm.tasks import stop_task

logger = logging.getLogger("realtime_llm.store")

INTERVAL_SECONDS = 1.0
# Messages indexed in one transaction: a long backlog (an import) goes in steps, each a
# short hold of the write lock, not in one.
CHUNK = 500

ANY_NOTED = Compiled(sa.text("SELECT 1 FROM messages_fts_pending LIMIT 1"))
NOTED = Compiled(sa.text("SELECT id FROM messages_fts_pending ORDER BY id LIMIT :chunk"))
INDEX = Compiled(sa.text("INSERT INTO messages_fts (rowid, content) SELECT m.id, m.content "
                         "FROM messages_fts_pending p JOIN messages m ON m.id = p.id WHERE p.id <= :last"))
FORGET = Compiled(sa.text("DELETE FROM messages_fts_pending WHERE id <= :last"))


class SearchIndex:
    def __init__(self, database: Database, interval: float = INTERVAL_SECONDS) -> None:
        self.database = database
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def catch_up(self) -> int:
        """Index every message noted before this call (and any noted meanwhile that fit in
        the last step); how many were indexed."""
        if await ANY_NOTED.fetch_one(self.database) is None:  # a read: no write lock for nothing
            return 0
        done = 0
        while True:
            indexed = await transaction(self.database, _index_some)
            done += indexed
            if indexed < CHUNK:  # the notes were empty when that step ended
                return done

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="search-index")

    async def close(self) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.catch_up()
            except Exception as exc:  # the database busy or away: the next round (or a search) catches up
                logger.warning("could not update the search index (%s)", type(exc).__name__)


def _index_some() -> Script[int]:
    rows = yield NOTED.bind(chunk=CHUNK)
    if rows:
        last = rows[-1][0]
        yield INDEX.bind(last=last)
        yield FORGET.bind(last=last)
    return len(rows)
