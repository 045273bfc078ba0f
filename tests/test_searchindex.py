"""SQLite's message search index, written behind the messages (store/searchindex.py), on a
real SQLite file: a search, still a read, finds every message written before it; the
server's background round indexes without one; deleting or changing messages, indexed or
not yet, keeps the index true (FTS5's own integrity-check compares it with the messages);
a backlog goes in bounded steps, and rounds of two processes at once index each message once."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from realtime_llm import tasks
from realtime_llm.config import Settings
from realtime_llm.keys import APIKeyBox
from realtime_llm.store import schema, searchindex
from realtime_llm.store.compiled import transaction
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.database import create_database, has_sqlite_search_index, migrate
from realtime_llm.store.records import Conversation
from realtime_llm.store.searchindex import SearchIndex
from realtime_llm.store.users import UserStore
from tests.servers import ServerProcess, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def connected(path: Path) -> Database:
    return create_database(Settings().replace(sqlite={"path": str(path)}))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = connected(tmp_path / "search.db")
    await database.connect()
    await migrate(database)
    yield database
    await database.disconnect()


async def a_store(db: Database) -> ConversationStore:
    assert await has_sqlite_search_index(db)
    return ConversationStore(db, APIKeyBox("s" * 40), fts=True)


async def a_conversation(db: Database, store: ConversationStore, name: str) -> Conversation:
    user = await UserStore(db).create(name, "hash")
    return await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")


async def found(store: ConversationStore, conversation: Conversation, q: str) -> list[int]:
    return [c["conversation_id"] for c in await store.list_for_user(conversation.user_id, q=q)]


async def in_index(db: Database, q: str) -> list[int]:
    """Message ids the index itself holds for `q`."""
    rows = await db.fetch_all("SELECT rowid FROM messages_fts WHERE messages_fts MATCH :q ORDER BY rowid",
                              {"q": f'"{q}"'})
    return [row[0] for row in rows]


async def noted(db: Database) -> int:
    return int(await db.fetch_val(sa.text("SELECT count(*) FROM messages_fts_pending")))


async def check_index(db: Database) -> None:
    """FTS5 compares its index with the messages table; a difference raises (malformed)."""
    await db.execute(sa.text("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)"))


async def caught_up(db: Database) -> int:
    indexed = await SearchIndex(db).catch_up()
    assert await noted(db) == 0
    await check_index(db)
    return indexed


async def test_a_message_not_indexed_yet_is_found_and_the_search_writes_nothing(db: Database) -> None:
    store = await a_store(db)
    mine = await a_conversation(db, store, "searcher")
    other = await a_conversation(db, store, "other")
    await store.messages.add(mine, "user", "An itinerary for Zanzibar, 50% off")
    await store.messages.add(other, "user", "Zanzibar too")
    assert await in_index(db, "zanzibar") == [] and await noted(db) == 2  # written behind, not yet
    for q in ("zanzibar", "ZANZIBAR", "50% off", "0%"):
        assert await found(store, mine, q) == [mine.id], q
    assert await found(store, mine, "zanzibar too") == []
    assert await noted(db) == 2  # a search is a read
    assert await caught_up(db) == 2
    assert len(await in_index(db, "zanzibar")) == 2 and await found(store, mine, "zanzibar") == [mine.id]


async def test_a_search_looks_up_the_noted_messages_by_id_and_scans_none(db: Database, tmp_path: Path) -> None:
    """Without statistics, SQLite drove a join of the notes with `messages` from `messages`: a scan."""
    store = await a_store(db)
    c = schema.conversations
    query = sa.select(c.c.id).where(c.c.user_id == 1, c.c.id.in_(store._conversations_mentioning("zanzibar")))
    sql = str(query.compile(dialect=sqlite_dialect(), compile_kwargs={"literal_binds": True}))
    with contextlib.closing(sqlite3.connect(tmp_path / "search.db")) as database:
        plan = [row[3] for row in database.execute("EXPLAIN QUERY PLAN " + sql)]
    assert not [step for step in plan if step.startswith("SCAN") and "VIRTUAL TABLE" not in step], plan
    assert "USING ROWID SEARCH ON TABLE messages_fts_pending FOR IN-OPERATOR" in plan


async def test_a_search_answers_while_another_connection_holds_the_write_lock(db: Database, tmp_path: Path) -> None:
    store = await a_store(db)
    mine = await a_conversation(db, store, "patient")
    await store.messages.add(mine, "user", "Kilimanjaro")
    writer = sqlite3.connect(tmp_path / "search.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        async with asyncio.timeout(2):  # the busy timeout is 5 s: a search that waited for the lock fails here
            assert await found(store, mine, "kilimanjaro") == [mine.id]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_deleting_and_changing_messages_indexed_or_not_keeps_the_index_true(db: Database) -> None:
    store = await a_store(db)
    kept = await a_conversation(db, store, "keeper")
    gone = await a_conversation(db, store, "leaver")
    for n in range(3):
        await store.messages.add(kept, "user", f"Zanzibar kept {n}")
        await store.messages.add(gone, "user", f"Zanzibar gone {n}")
    assert await caught_up(db) == 6
    for n in range(3, 6):  # only noted
        await store.messages.add(kept, "user", f"Zanzibar kept {n}")
        await store.messages.add(gone, "user", f"Zanzibar gone {n}")
    await store.delete_owned(gone.id, gone.user_id)  # three indexed, three noted
    # A text changed, one indexed and one noted (no route changes a text; the triggers must still hold)
    ids = [row[0] for row in await db.fetch_all(f"SELECT id FROM messages WHERE conversation_id = {kept.id} ORDER BY id")]
    for changed in (ids[0], ids[-1]):
        await db.execute(sa.text(f"UPDATE messages SET content = 'Serengeti instead' WHERE id = {changed}"))
    assert await found(store, kept, "serengeti") == [kept.id]
    await caught_up(db)
    assert await in_index(db, "gone") == []
    assert len(await in_index(db, "zanzibar kept")) == 4 and len(await in_index(db, "serengeti")) == 2


async def test_ids_used_again_after_the_newest_messages_went(db: Database) -> None:
    """SQLite hands the newest deleted message id out again (messages.id is not AUTOINCREMENT)."""
    store = await a_store(db)
    kept = await a_conversation(db, store, "older")
    gone = await a_conversation(db, store, "newest")
    await store.messages.add(kept, "user", "Zanzibar kept")
    await store.messages.add(gone, "user", "Zanzibar gone, indexed")
    await caught_up(db)
    await store.messages.add(gone, "user", "Zanzibar gone, noted")
    before = await db.fetch_val("SELECT max(id) FROM messages")
    await store.delete_owned(gone.id, gone.user_id)
    again = await a_conversation(db, store, "again")
    for text in ("Serengeti, an id used again", "Serengeti, another"):
        await store.messages.add(again, "user", text)
    assert await db.fetch_val("SELECT max(id) FROM messages") == before  # the ids came again
    await caught_up(db)
    assert await found(store, again, "serengeti") == [again.id] and await found(store, again, "zanzibar") == []
    assert len(await in_index(db, "zanzibar")) == 1 and len(await in_index(db, "serengeti")) == 2


async def steps(db: Database) -> list[int]:
    """How many messages each step of a round takes, driven one step at a time."""
    target = await db.fetch_val("SELECT max(id) FROM messages_fts_pending")
    taken: list[int] = []
    more = True
    while more:
        indexed, more = await transaction(db, lambda: searchindex._index_some(target))
        taken.append(indexed)
    return taken


async def test_a_backlog_goes_in_steps_bounded_by_messages_and_characters(db: Database,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(searchindex, "CHUNK", 3)
    monkeypatch.setattr(searchindex, "CHUNK_CHARS", 100)
    store = await a_store(db)
    mine = await a_conversation(db, store, "importer")
    for n in range(7):  # 30 characters each: three fit in a step
        await store.messages.add(mine, "user", f"Zanzibar {n} " + "x" * 19)
    assert await steps(db) == [3, 3, 1]
    for n in range(3):  # 51 characters each: one a step
        await store.messages.add(mine, "user", f"Zanzibar {n} " + "x" * 40)
    await store.messages.add(mine, "user", "Zanzibar, longer than a step " + "y" * 300)  # still indexed, alone
    await store.messages.add(mine, "user", "Zanzibar, the last")
    assert await steps(db) == [1, 1, 1, 1, 1]
    await check_index(db)
    assert len(await in_index(db, "zanzibar")) == 12


async def test_a_round_ends_while_messages_keep_coming(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """It indexes what was noted when it began; what comes meanwhile waits for the next."""
    monkeypatch.setattr(searchindex, "CHUNK", 1)  # a step indexes one; two writers note more meanwhile
    monkeypatch.setattr(searchindex, "STEP_PAUSE_SECONDS", 0.02)
    store = await a_store(db)
    mine = await a_conversation(db, store, "busy")
    for n in range(10):
        await store.messages.add(mine, "user", f"Zanzibar {n}")
    target = await db.fetch_val("SELECT max(id) FROM messages_fts_pending")
    writing = True

    async def write(k: int) -> None:
        while writing:
            await store.messages.add(mine, "user", f"Zanzibar from writer {k}")
            await asyncio.sleep(0.005)

    writers = [asyncio.create_task(write(k)) for k in range(2)]
    try:
        async with asyncio.timeout(10):
            assert await SearchIndex(db).catch_up() >= 10
    finally:
        writing = False
        await asyncio.gather(*writers)
    assert await db.fetch_val(f"SELECT count(*) FROM messages_fts_pending WHERE id <= {target}") == 0
    await caught_up(db)


async def test_rounds_of_two_processes_at_once_index_each_message_once(db: Database, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(searchindex, "CHUNK", 7)
    monkeypatch.setattr(searchindex, "STEP_PAUSE_SECONDS", 0.0)
    store = await a_store(db)
    mine = await a_conversation(db, store, "crowd")
    for n in range(40):
        await store.messages.add(mine, "user", f"Zanzibar {n}")
    second = connected(tmp_path / "search.db")
    await second.connect()
    try:
        counts = await asyncio.gather(*(SearchIndex(d).catch_up() for d in (db, second, db, second)))
    finally:
        await second.disconnect()
    assert sum(counts) == 40
    await caught_up(db)
    assert len(await in_index(db, "zanzibar")) == 40


async def back_to_version_8(db: Database, with_index: bool = True) -> None:
    """The search index as version 8 had it: written by triggers in each message's transaction."""
    for trigger in ("insert", "delete", "update"):
        await db.execute(sa.text(f"DROP TRIGGER messages_fts_{trigger}"))
    await db.execute(sa.text("DROP TABLE messages_fts_pending"))
    if with_index:
        for statement in schema.SEARCH_SQLITE[1:4]:  # the three triggers
            await db.execute(sa.text(statement))
    else:
        await db.execute(sa.text("DROP TABLE messages_fts"))
    await db.execute(schema.schema_version.update().values(version=8))


async def test_upgrade_from_version_8_keeps_the_index_and_writes_it_behind(db: Database) -> None:
    store = ConversationStore(db, APIKeyBox("s" * 40))
    mine = await a_conversation(db, store, "upgrader")
    await back_to_version_8(db)
    assert not await has_sqlite_search_index(db)
    for text in ("Zanzibar, indexed the old way", "Zanzibar, old and deleted"):
        await store.messages.add(mine, "user", text)
    assert len(await in_index(db, "zanzibar")) == 2

    assert await migrate(db) == schema.SCHEMA_VERSION == 9
    store = await a_store(db)
    await store.messages.add(mine, "user", "Zanzibar, indexed behind")
    assert len(await in_index(db, "zanzibar")) == 2 and await noted(db) == 1
    await db.execute(sa.text("DELETE FROM messages WHERE content = 'Zanzibar, old and deleted'"))
    assert await found(store, mine, "indexed behind") == [mine.id]
    assert await found(store, mine, "the old way") == [mine.id]
    await caught_up(db)
    assert len(await in_index(db, "zanzibar")) == 2


async def test_upgrade_of_a_database_without_the_index_leaves_search_scanning(db: Database) -> None:
    """SQLite without the trigram tokenizer had no index in version 8: the upgrade adds no
    trigger that would name one, and messages are still written and found."""
    await back_to_version_8(db, with_index=False)
    assert await migrate(db) == schema.SCHEMA_VERSION
    assert not await has_sqlite_search_index(db)
    names = {row[0] for row in await db.fetch_all(sa.text("SELECT name FROM sqlite_master"))}
    assert not {"messages_fts", "messages_fts_pending", "messages_fts_insert"} & names
    store = ConversationStore(db, APIKeyBox("s" * 40), fts=False)
    mine = await a_conversation(db, store, "scanner")
    await store.messages.add(mine, "user", "Zanzibar without an index")
    assert await found(store, mine, "zanzibar") == [mine.id]


def test_the_server_indexes_what_its_answers_write(tmp_path: Path) -> None:
    """The background round the server runs (services.open_services), through a chat."""
    path = tmp_path / "server.db"
    config = write_config(tmp_path / "config.yaml", {"sqlite": {"path": str(path)}, "auth": {"bcrypt_rounds": 4}})
    server = ServerProcess(config, tmp_path).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            credentials = {"username": "indexed", "password": "a long enough password"}
            http.post("/api/users/register", json=credentials).raise_for_status()
            headers = {"Authorization": f"Bearer {http.post('/api/users/login', json=credentials).json()['token']}"}
            cid = http.post("/api/conversations/create", json={}, headers=headers).json()["conversation_id"]
            with http.stream("POST", f"/api/chat/{cid}", json={"message": "Tell me of Zanzibar"}, headers=headers) as r:
                assert r.status_code == 200 and "full_response" in r.read().decode()
            database = sqlite3.connect(path)
            try:
                deadline = time.monotonic() + 10
                while database.execute("SELECT count(*) FROM messages_fts_pending").fetchone()[0] and (
                        time.monotonic() < deadline):
                    time.sleep(0.05)
                assert database.execute("SELECT count(*) FROM messages_fts_pending").fetchone()[0] == 0
                indexed = database.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH '\"zanzibar\"'"
                                           " ORDER BY rowid").fetchall()
                written = database.execute("SELECT id FROM messages WHERE content LIKE '%zanzibar%' ORDER BY id").fetchall()
            finally:
                database.close()
            assert indexed == written and len(written) >= 1  # the question (the demo's answer may quote it)
            listed = http.get("/api/conversations/list", params={"q": "zanzibar"}, headers=headers).json()
            assert [c["conversation_id"] for c in listed] == [cid]
    finally:
        server.stop()


async def test_a_failing_round_is_logged_and_tried_again_later_and_later(caplog: pytest.LogCaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """tasks.every, which runs the rounds: a failure that lasts is not logged every round."""
    monkeypatch.setattr(tasks, "MAX_BACKOFF_SECONDS", 0.3)
    calls: list[float] = []

    async def work() -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) <= 4:
            raise sqlite3.OperationalError("database is locked\nmore")

    loop = asyncio.create_task(tasks.every(0.01, work, "could not do it", logging.getLogger("test.every")))
    async with asyncio.timeout(5):
        while len(calls) < 7:
            await asyncio.sleep(0.005)
    await tasks.stop_task(loop)
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:], strict=False)]
    assert gaps[0] >= 0.019 and gaps[1] >= 0.039 and gaps[2] >= 0.079 and gaps[3] >= 0.159  # twice as late each time
    assert gaps[4] < 0.15 and gaps[5] < 0.15  # back to the interval (0.01 s) once it worked
    warnings = [r.getMessage() for r in caplog.records if r.name == "test.every"]
    assert warnings == ["could not do it (OperationalError: database is locked)"] * 4
