"""The SQL store on a real SQLite file and a real PostgreSQL database."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import AsyncIterator

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from realtime_llm.config import Settings
from realtime_llm.errors import BadRequest, ConversationNotFound, PayloadTooLarge
from realtime_llm.keys import APIKeyBox
from realtime_llm.providers import ChatMessage
from realtime_llm.store import conversations as conversations_module
from realtime_llm.store import messages as messages_module
from realtime_llm.store import schema
from realtime_llm.store.compiled import Script, transaction
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.database import create_database, has_sqlite_search_index, migrate
from realtime_llm.store.messages import MessageStore
from realtime_llm.store.paths import PathCache, PromptPath, read_path
from realtime_llm.store.records import Message
from realtime_llm.store.statements import INSERT_MESSAGE, NEXT_MESSAGE_ID
from realtime_llm.store.users import UserStore
from realtime_llm.usage import Usage

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings_for(database: str, tmp_path: Path) -> Settings:
    if database == "sqlite":
        return Settings().replace(sqlite={"path": str(tmp_path / "store.db")})
    return Settings().replace(database={"url": database})


@pytest.fixture
async def db(database: str, tmp_path: Path) -> AsyncIterator[object]:
    connection = create_database(settings_for(database, tmp_path))
    await connection.connect()
    async with connection.transaction():  # each test starts from empty tables
        await migrate(connection)
        for table in reversed(schema.metadata.sorted_tables):
            if table is not schema.schema_version:
                await connection.execute(table.delete())
    yield connection
    await connection.disconnect()


async def test_migrate_is_idempotent_and_versioned(db) -> None:
    """Running the migration again changes nothing and keeps the recorded version."""
    assert await migrate(db) == schema.SCHEMA_VERSION
    assert await db.fetch_val(sa.select(sa.func.count()).select_from(schema.schema_version)) == 1
    assert await db.fetch_val(sa.select(schema.schema_version.c.version)) == schema.SCHEMA_VERSION


async def test_upgrades_run_in_order(db, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database at an older version gets exactly the upgrades it lacks."""
    statements = [schema.Upgrade(alter=("CREATE TABLE upgrade_probe (n INTEGER)",)),
                  schema.Upgrade(alter=("INSERT INTO upgrade_probe (n) VALUES (2)",))]
    monkeypatch.setattr(schema, "UPGRADES", schema.UPGRADES + statements)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 2)
    try:
        assert await migrate(db) == schema.SCHEMA_VERSION
        assert await db.fetch_val(sa.text("SELECT n FROM upgrade_probe")) == 2
        assert await migrate(db) == schema.SCHEMA_VERSION  # nothing runs twice
        assert await db.fetch_val(sa.text("SELECT count(*) FROM upgrade_probe")) == 1
    finally:
        await db.execute(sa.text("DROP TABLE IF EXISTS upgrade_probe"))
        await db.execute(schema.schema_version.update().values(version=1 + len(schema.UPGRADES) - 2))


V2_COLUMNS = {"users": ("prompt_tokens", "completion_tokens"),
              "messages": ("prompt_tokens", "completion_tokens", "usage_estimated"),
              "conversations": ("message_count",)}
V3_COLUMNS = {"revoked_tokens": ("revoked_at",)}
V4_COLUMNS = {"messages": ("reasoning", "reasoning_tokens"), "conversations": ("params",)}
V5_COLUMNS = {"messages": ("parent_id",), "conversations": ("active_leaf_id",)}


async def back_to_version_7(db) -> None:
    """The tables as version 7 had them: no flag for imported users' short passwords."""
    await db.execute(sa.text("ALTER TABLE users DROP COLUMN password_change_required"))
    await db.execute(schema.schema_version.update().values(version=7))


async def back_to_version_6(db) -> None:
    """The tables as version 6 had them: no API tokens, no session epochs."""
    await back_to_version_7(db)
    await db.execute(sa.text("DROP TABLE api_tokens"))
    await db.execute(sa.text("DROP TABLE shares"))
    await db.execute(sa.text("DROP INDEX ix_users_sessions_ended_at"))
    for column in ("session_epoch", "sessions_ended_at"):
        await db.execute(sa.text(f"ALTER TABLE users DROP COLUMN {column}"))
    await db.execute(schema.schema_version.update().values(version=6))


async def back_to_version_5(db) -> None:
    """The tables as version 5 had them: no files."""
    await back_to_version_6(db)
    for table in ("message_files", "file_chunks", "files"):
        await db.execute(sa.text(f"DROP TABLE {table}"))
    await db.execute(schema.schema_version.update().values(version=5))


async def back_to_version_4(db) -> None:
    """The tables as version 4 had them: no tree of versions."""
    await back_to_version_5(db)
    await db.execute(sa.text("DROP INDEX ix_messages_children"))
    for table, columns in V5_COLUMNS.items():
        for column in columns:
            await db.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    await db.execute(schema.schema_version.update().values(version=4))


async def test_upgrade_from_version_1_keeps_data_and_indexes_it_for_search(db) -> None:
    """A version-1 database with conversations gets the usage columns and a search index
    that already covers its old messages."""
    dialect = db.url.dialect
    if dialect == "sqlite":
        for trigger in ("insert", "delete", "update"):
            await db.execute(sa.text(f"DROP TRIGGER messages_fts_{trigger}"))
        await db.execute(sa.text("DROP TABLE messages_fts"))
    else:
        await db.execute(sa.text("DROP INDEX ix_messages_content_trgm"))
    await db.execute(sa.text("DROP INDEX ix_revoked_tokens_revoked_at"))
    await back_to_version_4(db)
    for table, columns in [*V2_COLUMNS.items(), *V3_COLUMNS.items(), *V4_COLUMNS.items()]:
        for column in columns:
            await db.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    await db.execute(schema.schema_version.update().values(version=1))
    # Version-1 rows, written without the new columns.
    await db.execute(sa.text("INSERT INTO users (username, password_hash, created_time) VALUES ('old', 'h', 1)"))
    user_id = await db.fetch_val(sa.text("SELECT id FROM users WHERE username = 'old'"))
    await db.execute(sa.text(f"INSERT INTO conversations (user_id, title, model, created_time, last_message_id) "
                             f"VALUES ({user_id}, 'Old one', 'demo', 1, 1)"))
    cid = await db.fetch_val(sa.text("SELECT id FROM conversations WHERE title = 'Old one'"))
    await db.execute(sa.text(f"INSERT INTO messages (conversation_id, message_id, role, content, created_time) "
                             f"VALUES ({cid}, 1, 'user', 'An archived Zanzibar itinerary', 1)"))

    assert await migrate(db) == schema.SCHEMA_VERSION == 9
    store = ConversationStore(db, APIKeyBox("s" * 40), fts=await has_sqlite_search_index(db))
    assert store.fts == (dialect == "sqlite")
    assert [c["conversation_id"] for c in await store.list_for_user(user_id, q="zanzibar")] == [cid]
    (old,) = await store.messages.every(cid)
    assert old.content == "An archived Zanzibar itinerary" and old.usage is None and old.reasoning == ""
    assert (await store.get_owned(cid, user_id)).params == "{}"
    assert await UserStore(db).usage(user_id) == {"prompt_tokens": 0, "completion_tokens": 0}
    assert (await store.get_owned(cid, user_id)).message_count == 1  # backfilled
    assert old.parent_id == 0 and (await store.get_owned(cid, user_id)).active_leaf_id == 1
    if dialect == "postgresql":  # the search really has its index
        assert await db.fetch_val(sa.text(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_messages_content_trgm'")) == 1


async def test_upgrade_to_branches_makes_each_conversation_one_branch(db) -> None:
    """Version 4 dropped what an edit replaced, so ids have gaps: each conversation becomes
    one branch, every message after the one before it, and the active one is its end."""
    users, store = UserStore(db), ConversationStore(db, APIKeyBox("s" * 40))
    owner = await users.create("brancher", "hash")
    edited = await store.create(owner.id, title="edited", model="demo", system_prompt="", api_key="")
    empty = await store.create(owner.id, title="empty", model="demo", system_prompt="", api_key="")
    await back_to_version_4(db)
    for message_id, role in [(1, "user"), (2, "assistant"), (5, "user"), (6, "assistant")]:  # 3, 4: edited away
        await db.execute(sa.text(f"INSERT INTO messages (conversation_id, message_id, role, content, created_time) "
                                 f"VALUES ({edited.id}, {message_id}, '{role}', 'text {message_id}', 1)"))
    await db.execute(sa.text(f"UPDATE conversations SET last_message_id = 6, message_count = 4 WHERE id = {edited.id}"))

    assert await migrate(db) == schema.SCHEMA_VERSION
    assert [(m.message_id, m.parent_id) for m in await store.messages.every(edited.id)] == [(1, 0), (2, 1), (5, 2), (6, 5)]
    upgraded = await store.get_owned(edited.id, owner.id)
    assert upgraded.active_leaf_id == 6 and (await store.get_owned(empty.id, owner.id)).active_leaf_id == 0
    shown = await store.messages.history(upgraded)
    assert [(m["message_id"], m["parent_id"], m["sibling_ids"]) for m in shown] == [
        (1, None, [1]), (2, 1, [2]), (5, 2, [5]), (6, 5, [6])]
    added = await store.messages.add(upgraded, "user", "next")
    assert (added.message_id, added.parent_id) == (7, 6)  # the branch goes on


async def test_fork_copies_the_branch_in_sql_and_is_bounded(db, monkeypatch: pytest.MonkeyPatch) -> None:
    users, store = UserStore(db), ConversationStore(db, APIKeyBox("s" * 40))
    owner = await users.create("forker", "hash")
    source = await store.create(owner.id, title="source", model="demo", system_prompt="Be brief.", api_key="sk-1234567")
    await store.messages.add(source, "user", "q1")
    await store.messages.add(source, "assistant", "a1", Usage(3, 4), reasoning="hmm", parent_id=1)
    await store.messages.add(source, "user", "q2")
    await store.messages.add(source, "user", "q1 again", parent_id=0)  # another first message
    forked = await store.fork(source, 3)
    assert forked is not None and forked.id != source.id and forked.user_id == owner.id
    assert (forked.title, forked.system_prompt, forked.api_key_hint) == ("source", "Be brief.", source.api_key_hint)
    copied = await store.messages.every(forked.id)
    assert [(m.message_id, m.parent_id, m.content) for m in copied] == [(1, 0, "q1"), (2, 1, "a1"), (3, 2, "q2")]
    assert copied[1].usage == Usage(3, 4) and copied[1].reasoning == "hmm"
    stored = await store.get_owned(forked.id, owner.id)
    assert (stored.active_leaf_id, stored.message_count, stored.last_message_id) == (3, 3, 3)
    assert await store.fork(source, 99) is None
    monkeypatch.setattr(conversations_module, "FORK_MAX_MESSAGES", 2)
    with pytest.raises(PayloadTooLarge):
        await store.fork(source, 3)
    assert await store.fork(source, 2) is not None


async def test_sqlite_version_2_upgrade_keeps_every_row_and_ids_are_never_reused(tmp_path: Path) -> None:
    """A version-2 SQLite file (tables without AUTOINCREMENT, which reused the newest
    deleted conversation's id) is rebuilt in place: users, conversations, messages and
    their search index keep their ids and rows, and no id is handed out twice again."""
    path = tmp_path / "v2.db"
    db = create_database(settings_for("sqlite", tmp_path).replace(sqlite={"path": str(path)}))
    await db.connect()
    try:
        await migrate(db)
        await back_to_version_4(db)
        for name in ("users", "conversations"):  # back to version 2's own tables
            await db.execute(sa.text(f"DROP TABLE {name}"))
            ddl = str(sa.schema.CreateTable(schema.metadata.tables[name]).compile(dialect=sqlite_dialect()))
            await db.execute(sa.text(ddl.replace(" AUTOINCREMENT", "")))
        await db.execute(sa.text("DROP INDEX ix_revoked_tokens_revoked_at"))
        await db.execute(sa.text("ALTER TABLE revoked_tokens DROP COLUMN revoked_at"))
        await db.execute(schema.schema_version.update().values(version=2))
        users, store = UserStore(db), ConversationStore(db, APIKeyBox("s" * 40), fts=True)
        owner = await users.create("old_owner", "hash")
        kept = await store.create(owner.id, title="kept", model="demo", system_prompt="", api_key="")
        for message_id, role, text in [(1, "user", "A Zanzibar itinerary"), (2, "assistant", "Three days in Stone Town")]:
            await db.execute(sa.text(f"INSERT INTO messages (conversation_id, message_id, role, content, created_time)"
                                     f" VALUES ({kept.id}, {message_id}, '{role}', '{text}', 1)"))
        await db.execute(sa.text(f"UPDATE conversations SET last_message_id = 2, message_count = 2 WHERE id = {kept.id}"))
        newest = await store.create(owner.id, title="newest", model="demo", system_prompt="", api_key="")
        await db.execute(sa.text(f"DELETE FROM conversations WHERE id = {newest.id}"))  # as version 2 deleted
        assert await db.fetch_val(sa.text("SELECT count(*) FROM sqlite_master WHERE instr(sql, 'AUTOINCREMENT') > 0")) == 0

        assert await migrate(db) == schema.SCHEMA_VERSION
        assert await db.fetch_val(sa.text(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND instr(sql, 'AUTOINCREMENT') > 0")) == 2
        assert (await store.get_owned(kept.id, owner.id)).title == "kept"
        assert [(m.content, m.parent_id) for m in await store.messages.every(kept.id)] == [
            ("A Zanzibar itinerary", 0), ("Three days in Stone Town", 1)]  # one branch
        assert [m["content"] for m in await store.messages.history(await store.get_owned(kept.id, owner.id))] == [
            "A Zanzibar itinerary", "Three days in Stone Town"]
        assert [c["conversation_id"] for c in await store.list_for_user(owner.id, q="zanzibar")] == [kept.id]
        assert (await users.by_username("old_owner")) == owner
        again = await store.create(owner.id, title="after", model="demo", system_prompt="", api_key="")
        await store.delete_owned(again.id, owner.id)
        latest = await store.create(owner.id, title="latest", model="demo", system_prompt="", api_key="")
        assert latest.id > again.id > kept.id  # never the id of the newest deleted one
        assert await db.fetch_val(sa.text("PRAGMA foreign_keys")) == 1
    finally:
        await db.disconnect()


async def test_conversation_ids_are_never_reused(db) -> None:
    """On every database: deleting the newest conversation does not give its id to the next one."""
    user = await UserStore(db).create("reuse", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40))
    first = await store.create(user.id, title="a", model="demo", system_prompt="", api_key="")
    await store.delete_owned(first.id, user.id)
    second = await store.create(user.id, title="b", model="demo", system_prompt="", api_key="")
    assert second.id > first.id


async def test_newer_schema_is_refused(db) -> None:
    await db.execute(schema.schema_version.update().values(version=schema.SCHEMA_VERSION + 1))
    try:
        with pytest.raises(RuntimeError, match="newer"):
            await migrate(db)
    finally:
        await db.execute(schema.schema_version.update().values(version=schema.SCHEMA_VERSION))


async def test_message_ids_count_up_under_concurrency(db) -> None:
    """Concurrent appends get distinct message ids 1..N, in a conversation of their own."""
    user = await UserStore(db).create("concurrent", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40))
    a = await store.create(user.id, title="a", model="demo", system_prompt="", api_key="")
    b = await store.create(user.id, title="b", model="demo", system_prompt="", api_key="")
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(store.messages.add, a if i % 2 else b, "user", f"m{i}")
    for conversation in (a, b):
        ids = [m.message_id for m in await store.messages.every(conversation.id)]
        assert ids == list(range(1, 11))


async def test_a_message_whose_file_is_gone_saves_nothing(db) -> None:
    """A file deleted between its check and the message's transaction is a 400, and the
    transaction's earlier writes (the numbering, the message) are rolled back."""
    user = await UserStore(db).create("gone", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40))
    conversation = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")
    await store.messages.add(conversation, "user", "first")
    stored = await store.files.create(user.id, name="a.txt", content_type="text/plain", size=2, width=None,
                                      height=None, text="", text_chars=2, chunks=one_chunk(b"hi"),
                                      max_bytes_per_user=100)
    [file] = await store.files.owned([str(stored["file_id"])], user.id)
    await db.execute(schema.files.delete().where(schema.files.c.id == file.file_id))
    with pytest.raises(BadRequest, match="is gone"):
        await store.messages.add(conversation, "user", "with a file", attachments=[file])
    assert [m.content for m in await store.messages.every(conversation.id)] == ["first"]
    row = await db.fetch_one(sa.select(schema.conversations.c.message_count, schema.conversations.c.last_message_id,
                                       schema.conversations.c.active_leaf_id)
                             .where(schema.conversations.c.id == conversation.id))
    assert (row[0], row[1], row[2]) == (1, 1, 1)
    again = await store.messages.add(conversation, "user", "second")  # the connection is usable after it
    assert again.message_id == 2 and again.parent_id == 1


async def test_a_statement_that_fails_rolls_its_transaction_back(db) -> None:
    """A statement refused by the database within a transaction script (here a message id
    taken twice) raises the database's error, and the statements before it are undone."""
    user = await UserStore(db).create("refused", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40))
    conversation = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")
    await store.messages.add(conversation, "user", "first")

    def numbered_twice() -> Script[None]:
        yield NEXT_MESSAGE_ID.bind(cid=conversation.id, user_id=user.id)
        yield INSERT_MESSAGE.bind(cid=conversation.id, message_id=1, role="user", content="again", created_time=0,
                                  prompt_tokens=None, completion_tokens=None, usage_estimated=0, reasoning="",
                                  reasoning_tokens=None, parent_id=0)

    with pytest.raises(Exception) as refused:
        await transaction(db, numbered_twice)
    assert "unique" in str(refused.value).lower() or "duplicate" in str(refused.value).lower(), refused.value
    count = await db.fetch_val(sa.select(schema.conversations.c.message_count)
                               .where(schema.conversations.c.id == conversation.id))
    assert count == 1
    assert (await store.messages.add(conversation, "user", "second")).message_id == 2


async def test_a_message_to_a_deleted_conversation_is_not_written(db) -> None:
    """Another owner, or a conversation deleted meanwhile: ConversationNotFound, nothing written."""
    users = UserStore(db)
    owner, other = await users.create("owner", "hash"), await users.create("other", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40))
    conversation = await store.create(owner.id, title="t", model="demo", system_prompt="", api_key="")
    forged = dataclasses.replace(conversation, user_id=other.id)
    with pytest.raises(ConversationNotFound):
        await store.messages.add(forged, "assistant", "not yours", Usage(10, 20))
    assert await db.fetch_val(sa.select(schema.users.c.completion_tokens).where(schema.users.c.id == owner.id)) == 0
    await store.delete_owned(conversation.id, owner.id)
    with pytest.raises(ConversationNotFound):
        await store.messages.add(conversation, "user", "too late")
    assert await db.fetch_val(sa.select(sa.func.count()).select_from(schema.messages)) == 0


async def test_a_kept_prompt_path_is_the_path_read_whole(db, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt's path kept from the turn before (store/paths.py) gives the messages a
    read of the whole branch gives, whatever came between: answers, edits and regenerates
    (new branches), a switch back to an older leaf, another budget, thinking counted or
    not, messages with files."""
    extended: list[int] = []
    real_extend = messages_module.extend
    monkeypatch.setattr(messages_module, "extend", lambda *a, **k: extended.append(1) or real_extend(*a, **k))
    rng = random.Random(21)
    user = await UserStore(db).create("paths", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40))
    conversation = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")
    added: list[int] = []
    checked_items = 0
    for step in range(150):
        parent = rng.choice(added[-6:]) if added and rng.random() < 0.1 else None  # mostly at the end, or an edit
        files = []
        if rng.random() < 0.05:
            stored = await store.files.create(user.id, name=f"f{step}.txt", content_type="text/plain", size=2,
                                              width=None, height=None, text="hi", text_chars=2,
                                              chunks=one_chunk(b"hi"), max_bytes_per_user=10_000)
            files = await store.files.owned([str(stored["file_id"])], user.id)
        message = await store.messages.add(conversation, rng.choice(["user", "assistant"]),
                                           f"m{step} " + "x" * rng.randint(0, 120), parent_id=parent,
                                           reasoning="r" * rng.choice([0, 0, 40]), attachments=files)
        added.append(message.message_id)
        leaf = message.message_id if rng.random() < 0.85 else rng.choice(added)  # or a switch, a regenerate
        budget = 400 if rng.random() < 0.8 else rng.choice([2_000, 60])
        with_reasoning = rng.random() < 0.05
        kept = await store.messages.recent(conversation, budget, leaf, with_reasoning=with_reasoning)
        whole = await MessageStore(db, store.cache, store.files).recent(conversation, budget, leaf,
                                                                        with_reasoning=with_reasoning)
        assert kept == whole, f"step {step}"
        counted = len(extended)
        kept_path = store.messages.kept(conversation, budget, leaf, with_reasoning)
        del extended[counted:]  # (extended counts recent()'s own uses of the kept path, not this look)
        if kept_path is not None:  # what a prompt takes from it: the messages as a model is sent them
            assert kept_path.items == tuple(ChatMessage(m.role, m.content, m.reasoning if with_reasoning else "")
                                            for m in whole), f"step {step}"
            checked_items += 1
        path = store.messages.paths.get(conversation.id)
        if path is not None:  # its sums, kept as it grew, are those of a count over it
            recount = read_path(path.owner, path.leaf, path.messages, path.budget, path.with_reasoning, path.complete)
            assert (path.used, path.cost) == (recount.used, recount.cost), f"step {step}"
    assert len(extended) > 45, len(extended)
    assert checked_items > 45, checked_items


async def test_a_turn_at_the_end_of_the_kept_path_reads_no_path(db, monkeypatch: pytest.MonkeyPatch) -> None:
    """add() moves the kept path on to each message added under its leaf, so the next
    prompt, which ends at the new user message, reads no row; an edit (a sibling) reads
    again. Each prompt is what a read of the whole branch gives."""
    reads: list[int] = []
    real_fetch = messages_module.PATH_UP.fetch_all
    monkeypatch.setattr(messages_module.PATH_UP, "fetch_all", lambda *a, **k: reads.append(1) or real_fetch(*a, **k))
    user = await UserStore(db).create("advance", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40))
    conversation = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")

    async def turn(text: str, parent: int | None = None) -> int:
        question = await store.messages.add(conversation, "user", text, parent_id=parent)
        before = len(reads)
        kept = await store.messages.recent(conversation, 10_000, question.message_id)
        read = len(reads) - before
        whole = MessageStore(db, store.cache, store.files)  # nothing kept: reads the whole branch
        assert kept == await whole.recent(conversation, 10_000, question.message_id)
        await store.messages.add(conversation, "assistant", f"answer to {text}", Usage(3, 4, True))
        return read

    assert await turn("first") == 1  # nothing kept yet
    assert [await turn(f"turn {i}") for i in range(5)] == [0] * 5
    leaf = await store.messages.active_leaf(conversation)
    edited = (await store.messages.get(conversation.id, leaf - 1))
    assert edited is not None and edited.role == "user"
    assert await turn("edited", parent=edited.parent_id) > 0  # another branch: read
    assert await turn("after the edit") == 0
    assert [m.content for m in await store.messages.recent(conversation, 10_000, leaf)][-2:] == \
        ["turn 4", "answer to turn 4"]  # the old branch's path is still its own


async def test_prompt_paths_kept_are_bounded() -> None:
    """The paths kept are bounded in characters, the least recently used dropped first."""
    def path(leaf: int, chars: int) -> PromptPath:
        return read_path(1, leaf, (Message(leaf, "user", "x" * chars, 0),), 10_000, False, True)

    cache = PathCache(max_cost=3 * path(0, 1_000).cost)
    for cid in (1, 2, 3):
        cache.put(cid, path(cid, 1_000))
    assert cache.get(1) is not None  # 1 is now the most recently used
    cache.put(4, path(4, 1_000))
    assert cache.get(2) is None and all(cache.get(cid) is not None for cid in (1, 3, 4))
    cache.put(5, path(5, 10 * 1_000))  # more than the whole bound: not kept, nothing dropped for it
    assert cache.get(5) is None and all(cache.get(cid) is not None for cid in (1, 3, 4))
    cache.drop(3)
    cache.put(6, path(6, 1_000))
    assert all(cache.get(cid) is not None for cid in (1, 4, 6))
    wide = read_path(1, 8, (Message(8, "user", "\u20ac" * 1_000, 0),), 10_000, False, True)
    assert wide.cost > path(8, 1_000).cost + 900  # bytes held, not characters: 2 a character here
    assert path(7, 10).covers(1, 10_000, False) and not path(7, 10).covers(2, 10_000, False)  # the owner's only
    cache.put(9, path(9, 10))
    cache.advance(9, 2, Message(10, "user", "another user's", 0, parent_id=9))  # not the owner: not moved on
    cache.advance(9, 1, Message(11, "user", "a sibling", 0, parent_id=8))  # under another message
    cache.advance(9, 1, Message(12, "user", "with a file", 0, parent_id=9,
                                attachments=(object(),)))  # type: ignore[arg-type]
    kept = cache.get(9)
    assert kept is not None and kept.leaf == 9 and [m.content for m in kept.messages] == ["x" * 10]
    cache.advance(9, 1, Message(13, "user", "next", 0, parent_id=9))
    kept = cache.get(9)
    assert kept is not None and kept.leaf == 13 and [m.content for m in kept.messages] == ["x" * 10, "next"]


async def test_deleting_a_user_cascades(db) -> None:
    """Foreign keys are enforced: rows of a deleted user do not linger."""
    user = await UserStore(db).create("cascade", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40))
    conversation = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")
    stored = await store.files.create(user.id, name="a.txt", content_type="text/plain", size=2, width=None,
                                      height=None, text="", text_chars=2, chunks=one_chunk(b"hi"),
                                      max_bytes_per_user=100)
    [file] = await store.files.owned([str(stored["file_id"])], user.id)
    await store.messages.add(conversation, "user", "hello", attachments=[file])
    await db.execute(schema.users.delete().where(schema.users.c.id == user.id))
    for table in (schema.conversations, schema.messages, schema.files, schema.file_chunks, schema.message_files):
        assert await db.fetch_val(sa.select(sa.func.count()).select_from(table)) == 0, table.name


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_api_key_is_not_stored_in_clear(db) -> None:
    user = await UserStore(db).create("keys", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40))
    conversation = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="sk-live-abcdef123456")
    row = await db.fetch_one(sa.select(schema.conversations).where(schema.conversations.c.id == conversation.id))
    assert "abcdef123456" not in str(dict(row._mapping))
    assert store.box.open(row["api_key_sealed"]) == "sk-live-abcdef123456"


async def test_sqlite_connections_are_configured(tmp_path: Path) -> None:
    """Every pooled SQLite connection has WAL, foreign keys and a busy timeout."""
    connection = create_database(settings_for("sqlite", tmp_path))
    await connection.connect()
    try:
        results = []

        async def probe() -> None:
            async with connection.connection() as conn:
                raw = conn.raw_connection
                values = []
                for pragma in ("journal_mode", "foreign_keys", "busy_timeout"):
                    async with raw.execute(f"PRAGMA {pragma}") as cursor:
                        values.append((await cursor.fetchone())[0])
                results.append(values)
                await anyio.sleep(0.05)  # hold it so the others open their own

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(probe)
        assert results == [["wal", 1, 5000]] * 3
    finally:
        await connection.disconnect()


@pytest.mark.parametrize("use_index", [True, False])
async def test_search_with_and_without_the_sqlite_index(db, use_index: bool) -> None:
    """Where SQLite lacks the FTS5 trigram tokenizer, search scans instead, with the same answers."""
    user = await UserStore(db).create(f"search_{use_index}", "hash")
    other = await UserStore(db).create(f"other_{use_index}", "hash")
    store = ConversationStore(db, APIKeyBox("s" * 40), fts=use_index and await has_sqlite_search_index(db))
    mine = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")
    theirs = await store.create(other.id, title="t", model="demo", system_prompt="", api_key="")
    await store.messages.add(mine, "user", "Kilimanjaro at 50% humidity")
    await store.messages.add(theirs, "user", "Kilimanjaro too")
    for q in ("kilimanjaro", "KILIM", "50%", "0%", "% h"):
        assert [c["conversation_id"] for c in await store.list_for_user(user.id, q=q)] == [mine.id], q
    assert await store.list_for_user(user.id, q="kilimanjaro too") == []
