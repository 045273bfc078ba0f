"""SQLite's message search index, written behind the messages (store/searchindex.py), on a
real SQLite file: a search finds every message written before it, the background round
indexes without one, and deleting or changing messages, indexed or not yet, keeps the
index true (FTS5's own integrity-check compares it with the messages)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest
import sqlalchemy as sa
from databases import Database

from realtime_llm.config import Settings
from realtime_llm.keys import APIKeyBox
from realtime_llm.store import schema, searchindex
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.database import create_database, has_sqlite_search_index, migrate
from realtime_llm.store.records import Conversation
from realtime_llm.store.searchindex import SearchIndex
from realtime_llm.store.users import UserStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = create_database(Settings().replace(sqlite={"path": str(tmp_path / "search.db")}))
    await database.connect()
    await migrate(database)
    yield database
    await database.disconnect()


async def a_store(db: Database) -> ConversationStore:
    store = ConversationStore(db, APIKeyBox("s" * 40), fts=await has_sqlite_search_index(db))
    assert store.search_index is not None
    return store


async def a_conversation(db: Database, store: ConversationStore, name: str) -> Conversation:
    user = await UserStore(db).create(name, "hash")
    return await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")


async def found(store: ConversationStore, conversation: Conversation, q: str) -> list[int]:
    """The conversations a search by the owner finds (the store catches the index up first)."""
    return [c["conversation_id"] for c in await store.list_for_user(conversation.user_id, q=q)]


async def in_index(db: Database, q: str) -> list[int]:
    """Message ids the index itself holds for `q`: no catching up."""
    rows = await db.fetch_all("SELECT rowid FROM messages_fts WHERE messages_fts MATCH :q ORDER BY rowid",
                              {"q": f'"{q}"'})
    return [row[0] for row in rows]


async def noted(db: Database) -> int:
    return int(await db.fetch_val(sa.text("SELECT count(*) FROM messages_fts_pending")))


async def check_index(db: Database) -> None:
    """FTS5 compares its index with the messages table; a difference raises (malformed)."""
    await db.execute(sa.text("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)"))


async def test_a_message_written_behind_is_found_by_the_next_search(db: Database) -> None:
    store = await a_store(db)
    mine = await a_conversation(db, store, "searcher")
    await store.messages.add(mine, "user", "An itinerary for Zanzibar")
    assert await in_index(db, "zanzibar") == [] and await noted(db) == 1  # written behind, not yet
    assert await found(store, mine, "zanzibar") == [mine.id]
    assert await noted(db) == 0 and len(await in_index(db, "zanzibar")) == 1
    await check_index(db)


async def test_the_background_round_indexes_without_a_search(db: Database) -> None:
    store = await a_store(db)
    mine = await a_conversation(db, store, "quiet")
    index = SearchIndex(db, interval=0.05)
    await index.start()
    try:
        for n in range(5):
            await store.messages.add(mine, "user", f"Kilimanjaro, day {n}")
        async with asyncio.timeout(10):
            while await noted(db):
                await asyncio.sleep(0.05)
        assert len(await in_index(db, "kilimanjaro")) == 5
    finally:
        await index.close()
    await check_index(db)


async def test_deleting_and_changing_messages_indexed_or_not_keeps_the_index_true(db: Database) -> None:
    store = await a_store(db)
    kept = await a_conversation(db, store, "keeper")
    gone = await a_conversation(db, store, "leaver")
    for n in range(3):  # indexed
        await store.messages.add(kept, "user", f"Zanzibar kept {n}")
        await store.messages.add(gone, "user", f"Zanzibar gone {n}")
    assert await found(store, kept, "zanzibar") == [kept.id]
    for n in range(3, 6):  # only noted
        await store.messages.add(kept, "user", f"Zanzibar kept {n}")
        await store.messages.add(gone, "user", f"Zanzibar gone {n}")
    await store.delete_owned(gone.id, gone.user_id)  # its messages: three in the index, three noted
    # A message's text changed: one indexed, one noted (no route changes text; the triggers must still hold)
    ids = [row[0] for row in await db.fetch_all(sa.text(
        f"SELECT id FROM messages WHERE conversation_id = {kept.id} ORDER BY id"))]
    for changed in (ids[0], ids[-1]):
        await db.execute(sa.text(f"UPDATE messages SET content = 'Serengeti instead' WHERE id = {changed}"))
    await check_index_after_catching_up(db, store)
    assert await in_index(db, "gone") == []
    assert len(await in_index(db, "zanzibar kept")) == 4 and len(await in_index(db, "serengeti")) == 2
    assert await found(store, kept, "serengeti") == [kept.id]


async def check_index_after_catching_up(db: Database, store: ConversationStore) -> None:
    assert store.search_index is not None
    await store.search_index.catch_up()
    assert await noted(db) == 0
    await check_index(db)


async def test_a_backlog_is_indexed_in_steps(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(searchindex, "CHUNK", 3)
    store = await a_store(db)
    mine = await a_conversation(db, store, "importer")
    for n in range(10):
        await store.messages.add(mine, "user", f"Zanzibar {n}")
    steps: list[int] = []
    real = searchindex._index_some

    def counted() -> searchindex.Script[int]:
        steps.append(1)
        return (yield from real())

    monkeypatch.setattr(searchindex, "_index_some", counted)
    assert store.search_index is not None
    assert await store.search_index.catch_up() == 10
    assert len(steps) == 4  # 3 + 3 + 3 + 1
    assert len(await in_index(db, "zanzibar")) == 10
    await check_index(db)


async def test_searches_catching_up_at_once_index_each_message_once(db: Database) -> None:
    store = await a_store(db)
    mine = await a_conversation(db, store, "crowd")
    for n in range(40):
        await store.messages.add(mine, "user", f"Zanzibar {n}")
    assert store.search_index is not None
    counts = await asyncio.gather(*(store.search_index.catch_up() for _ in range(4)),
                                  *(found(store, mine, "zanzibar") for _ in range(4)))
    assert sum(counts[:4]) <= 40 and all(hit == [mine.id] for hit in counts[4:])
    assert await noted(db) == 0 and len(await in_index(db, "zanzibar")) == 40
    await check_index(db)


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
    await store.messages.add(mine, "user", "Zanzibar, indexed the old way")
    assert len(await in_index(db, "zanzibar")) == 1

    assert await migrate(db) == schema.SCHEMA_VERSION == 9
    store = await a_store(db)
    await store.messages.add(mine, "user", "Zanzibar, indexed behind")
    assert len(await in_index(db, "zanzibar")) == 1 and await noted(db) == 1
    assert await found(store, mine, "indexed behind") == [mine.id]
    assert await found(store, mine, "the old way") == [mine.id]
    await check_index(db)


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
