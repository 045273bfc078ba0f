"""realtime-llm import-original against real sources: the Go original's SQLite file, in both
of its schema versions, with bcrypt-"$2a$" (cost 10) users as Go wrote them, and its Redis
blobs (a redis-server of the test's own) in the original's formats; imported into a SQLite
file and a PostgreSQL database of the test's own while the server runs on it, then spoken
to over HTTP."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import asyncpg
import bcrypt
import pytest
import redis

from realtime_llm.auth import ORIGINAL, PasswordHasher
from tests.backends import PrivateRedis
from tests.conftest import Api, base_config, own_database
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config

SYSTEM_PROMPT = "你是一个乐于回答各种问题的小助手"


def go_hash(password: str) -> str:
    """As the original stored it: golang.org/x/crypto/bcrypt, DefaultCost 10, "$2a$"."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode().replace("$2b$", "$2a$")


def write_original(path: Path, with_create_time: bool, users: list[tuple[int, str, str]],
                   conversations: list[tuple[str, str, int, int]]) -> None:
    """The original's tables, exactly as storage/sql_queries.go creates them (the first
    versions had no create_time)."""
    database = sqlite3.connect(path)
    database.execute("CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT UNIQUE NOT NULL, "
                     "password TEXT NOT NULL)")
    created = "create_time INTEGER NOT NULL," if with_create_time else ""
    database.execute(f"CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, user_id INTEGER NOT NULL,"
                     f" {created} FOREIGN KEY(user_id) REFERENCES users(id) ON DELETE CASCADE)")
    database.executemany("INSERT INTO users (id, username, password) VALUES (?, ?, ?)", users)
    for key, title, user_id, create_time in conversations:
        if with_create_time:
            database.execute("INSERT INTO conversations VALUES (?, ?, ?, ?)", (key, title, user_id, create_time))
        else:
            database.execute("INSERT INTO conversations VALUES (?, ?, ?)", (key, title, user_id))
    database.commit()
    database.close()


# Later versions' blob: message ids, model, the plaintext key, Unix seconds.
BLOB_4242 = {
    "conversation_id": 4242, "title": "Rust lifetimes", "model": "fake-model", "api_key": "sk-alice-original-0001",
    "created_time": 1732400000,
    "messages": [{"role": "system", "content": SYSTEM_PROMPT, "message_id": 0},
                 {"role": "user", "content": "What is a lifetime?", "message_id": 1},
                 {"role": "assistant", "content": "A region of code where a reference is valid.", "message_id": 2},
                 {"role": "user", "content": "And 'static?", "message_id": 3},
                 {"role": "assistant", "content": "The whole program.", "message_id": 4}],
}
# The first versions' blob (zero-padded string id, ISO time; no message ids, model or key).
BLOB_77 = {"conversation_id": "000077", "title": "Old one", "created_time": "2024-11-17T10:00:00Z",
           "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}]}
BLOB_99 = {"conversation_id": 99, "title": "Bob's", "model": "demo", "api_key": "", "created_time": 1732400500,
           "messages": [{"role": "system", "content": SYSTEM_PROMPT, "message_id": 0},
                        {"role": "user", "content": "short password here", "message_id": 1}]}


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The database imported into: a SQLite file or a PostgreSQL database, of this test's own."""
    yield from own_database(request.param)


@pytest.fixture
def original_redis() -> Iterator[PrivateRedis]:
    private = PrivateRedis()
    yield private
    private.stop()


def import_original(config: Path, sqlite_path: Path, redis_url: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "realtime_llm", "import-original", "--from-sqlite", str(sqlite_path),
               "--config", str(config)]
    if redis_url:
        command += ["--from-redis", redis_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def stored_hash(target: str, workdir: Path, username: str) -> str:
    query = "SELECT password_hash FROM users WHERE username = "
    if target == "sqlite":
        with sqlite3.connect(workdir / "chat.db") as database:
            return str(database.execute(query + "?", (username,)).fetchone()[0])

    async def fetch() -> str:
        connection = await asyncpg.connect(target)
        try:
            return str(await connection.fetchval(query + "$1", username))
        finally:
            await connection.close()
    return asyncio.run(fetch())


def login(api: Api, username: str, password: str) -> dict[str, str] | None:
    response = api.http.post("/api/users/login", json={"username": username, "password": password})
    if response.status_code == 401:
        return None
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.mark.parametrize("with_create_time", [True, False], ids=["create_time", "first-schema"])
def test_the_originals_users_and_conversations_move_in(target: str, with_create_time: bool, tmp_path: Path,
                                                       original_redis: PrivateRedis, upstream: FakeUpstream) -> None:
    server = ServerProcess(write_config(tmp_path / "config.yaml", base_config(tmp_path, target, upstream)),
                           tmp_path).start()
    try:
        api = Api(server.url)
        # This server has been used: carol exists, conversations 1 and 2 were made, 2 deleted since.
        carol = api.register("carol")
        carol_headers = {"Authorization": f"Bearer {api.login(carol)}"}
        first = api.create_conversation(carol_headers, title="carol's")["conversation_id"]
        second = api.create_conversation(carol_headers, title="gone")["conversation_id"]
        assert api.http.post(f"/api/conversations/del/{second}", headers=carol_headers).status_code == 200

        source = tmp_path / "original.db"
        write_original(source, with_create_time,
                       users=[(1, "alice", go_hash("alice-password-1")), (2, "bob", go_hash("abc")),
                              (3, "carol", go_hash("carol-original")), (4, "dave", "not a bcrypt hash"),
                              (5, "eve", "$2a$31$" + "a" * 53)],  # a day of bcrypt per login: refused
                       conversations=[("4242", "Rust lifetimes", 1, 1732400001), ("000077", "Old one", 1, 1700000000),
                                      ("5150", "No blob", 1, 1732400002), ("99", "Bob's", 2, 1732400500),
                                      ("12", "Carol's old", 3, 1732400600), (str(first), "collides", 1, 1732400003),
                                      (str(second), "was deleted here", 1, 1732400004),
                                      ("not-a-number", "odd", 1, 1732400005), ("31337", "orphan", 999, 1732400006),
                                      # An early zero-padded id without a blob of its own, and bob's
                                      # conversation 42 with one: alice's 42 must not get bob's.
                                      ("000042", "alice's 42", 1, 1732400007), ("42", "bob's 42", 2, 1732400008),
                                      ("0", "id zero", 1, 1732400009)])
        blobs = redis.Redis.from_url(original_redis.url)
        blobs.set("conversation:4242", json.dumps(BLOB_4242))
        blobs.set("conversation:000077", json.dumps(BLOB_77))
        blobs.set("conversation:99", json.dumps(BLOB_99))
        blobs.set("conversation:42", json.dumps({**BLOB_99, "api_key": "sk-bob-secret-0042",
                                                 "messages": [{"role": "user", "content": "bob's secret"}]}))
        blobs.set("conversation:0", json.dumps({"title": "id zero", "model": "glm-4", "api_key": "glm-key-0000000",
                                                "created_time": 1732400009,
                                                "messages": [{"role": "user", "content": "zero?"}]}))
        blobs.close()

        config = tmp_path / "config.yaml"
        result = import_original(config, source, original_redis.url)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "imported 2 users, 9 conversations, 9 messages; skipped 3 users, 3 conversations" in out, out
        assert "skipped user 'carol'" in out and "skipped user 'dave'" in out and "skipped user 'eve'" in out
        # An id this database has (1), or had (2, deleted), and bob's 42 after alice's 000042,
        # and id 0: imported under new ids, nothing lost, nothing given away.
        new_id = "its id cannot be kept (the id is, or was, another conversation's here): imported under a new one"
        assert f"conversation {first} of 'alice': {new_id}" in out
        assert f"conversation {second} of 'alice': {new_id}" in out
        assert f"conversation 42 of 'bob': {new_id}" in out
        assert "conversation 0 of 'alice': its id cannot be kept (ids here are 1 to 2147483647)" in out
        assert "skipped conversation not-a-number of 'alice': its id is not a number" in out
        assert "its model 'glm-4' is not served here: 'demo', without its key" in out
        assert "skipped conversation not-a-number" in out and "skipped conversation 31337" in out
        assert "conversation 5150 of 'alice': no messages in Redis: imported empty" in out

        # The original password logs in, and the hash becomes this server's at that login.
        assert login(api, "alice", "wrong password") is None
        assert stored_hash(target, tmp_path, "alice").startswith(ORIGINAL)
        alice = login(api, "alice", "alice-password-1")
        assert alice is not None
        assert not stored_hash(target, tmp_path, "alice").startswith(ORIGINAL)
        assert login(api, "alice", "alice-password-1") is not None  # and again, through our hash
        assert login(api, "alice", "alice-password-") is None
        me = api.http.get("/api/users/me", headers=alice).json()
        assert me["username"] == "alice" and me["password_change_required"] is False

        listed = {c["conversation_id"]: c for c in api.http.get("/api/conversations/list", headers=alice).json()}
        renumbered = {c["title"]: cid for cid, c in listed.items() if cid not in (42, 77, 4242, 5150)}
        assert sorted(renumbered) == ["collides", "id zero", "was deleted here"]
        assert sorted(renumbered.values()) == [5151, 5152, 5153]  # above every id kept
        zero = renumbered["id zero"]
        zero_history = api.http.get(f"/api/conversations/history/{zero}", headers=alice).json()
        assert zero_history["model"] == "demo" and [m["content"] for m in zero_history["messages"]] == ["zero?"]
        assert api.http.get(f"/api/conversations/export/{zero}?format=json", headers=alice).json()["api_key"] == ""
        alice_42 = api.http.get("/api/conversations/history/42", headers=alice).json()
        assert alice_42["title"] == "alice's 42" and alice_42["messages"] == []
        history = api.http.get("/api/conversations/history/4242", headers=alice).json()
        assert history["title"] == "Rust lifetimes" and history["model"] == "fake-model"
        assert [(m["message_id"], m["role"], m["content"]) for m in history["messages"]] == [
            (m["message_id"], m["role"], m["content"]) for m in BLOB_4242["messages"][1:]]
        exported = api.http.get("/api/conversations/export/4242?format=json", headers=alice).json()
        assert exported["system_prompt"] == SYSTEM_PROMPT
        assert exported["api_key"] == "sk-…0001"  # sealed, shown masked like any other
        assert listed[4242]["created_time"] == (1732400001 if with_create_time else 1732400000)
        old = api.http.get("/api/conversations/history/77", headers=alice).json()
        assert old["model"] == "demo" and [m["content"] for m in old["messages"]] == ["hi", "hello"]
        assert [m["message_id"] for m in old["messages"]] == [1, 2]
        assert listed[77]["created_time"] == (1700000000 if with_create_time else 1731837600)
        assert api.http.get("/api/conversations/history/5150", headers=alice).json()["messages"] == []
        assert api.http.get("/api/conversations/history/12", headers=alice).status_code == 404

        # The conversation goes on: the original's key (sealed here) goes upstream.
        asked = api.http.post("/api/chat/4242", headers=alice, json={"message": "next question"})
        assert asked.status_code == 200, asked.text
        assert upstream.request_for("next question").headers["authorization"] == "Bearer sk-alice-original-0001"
        sent = upstream.request_for("next question").body["messages"]
        assert sent[0] == {"role": "system", "content": SYSTEM_PROMPT} and len(sent) == 6

        # New conversations get ids above the imported ones.
        assert api.create_conversation(alice, title="new")["conversation_id"] == 5155  # bob's 42 is 5154

        # A short legacy password logs in and is flagged until it is changed.
        bob = login(api, "bob", "abc")
        assert bob is not None
        assert api.http.get("/api/users/me", headers=bob).json()["password_change_required"] is True
        bobs = {c["title"]: c["conversation_id"]
                for c in api.http.get("/api/conversations/list", headers=bob).json()}
        assert bobs == {"Bob's": 99, "bob's 42": 5154}
        assert [m["content"] for m in api.http.get("/api/conversations/history/5154", headers=bob).json()[
            "messages"]] == ["bob's secret"]
        changed = api.http.post("/api/users/password", headers=bob,
                                json={"old_password": "abc", "new_password": "a much longer one"})
        assert changed.status_code == 200, changed.text
        bob = login(api, "bob", "a much longer one")
        assert bob is not None
        assert api.http.get("/api/users/me", headers=bob).json()["password_change_required"] is False
        # carol is this server's, not the original's.
        assert login(api, "carol", "carol-original") is None

        # Running it again imports nothing twice.
        before = {cid: api.http.get(f"/api/conversations/history/{cid}", headers=alice).json() for cid in listed}
        again = import_original(config, source, original_redis.url)
        assert again.returncode == 0, again.stderr
        assert "imported 0 users, 0 conversations, 0 messages" in again.stdout, again.stdout
        after = {cid: api.http.get(f"/api/conversations/history/{cid}", headers=alice).json() for cid in listed}
        assert after == before
    finally:
        server.stop()


def test_without_redis_conversations_come_empty(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, "sqlite"))
    source = tmp_path / "original.db"
    write_original(source, True, users=[(1, "erin", go_hash("erin-password"))],
                   conversations=[("10", "a", 1, 1732400000), ("11", "b", 1, 1732400001)])
    result = import_original(config, source)
    assert result.returncode == 0, result.stderr
    assert "imported 1 users, 2 conversations, 0 messages" in result.stdout
    assert "no --from-redis given" in result.stdout


def test_an_unreadable_source_imports_nothing_and_fails(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, "sqlite"))
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database " * 100)
    other_schema = tmp_path / "other.db"
    sqlite3.connect(other_schema).execute("CREATE TABLE things (x)").connection.close()
    good = tmp_path / "original.db"
    write_original(good, True, users=[(1, "frank", go_hash("frank-password"))],
                   conversations=[("10", "a", 1, 1732400000)])
    for source, redis_url in [(tmp_path / "missing.db", None), (not_sqlite, None), (other_schema, None),
                              (good, "redis://127.0.0.1:9/0")]:
        result = import_original(config, source, redis_url)
        assert result.returncode == 1, (source, result.stdout, result.stderr)
        assert "cannot read the original" in result.stderr
        assert "Traceback" not in result.stderr
    # Nothing was written by any of them.
    if (tmp_path / "chat.db").exists():
        with sqlite3.connect(tmp_path / "chat.db") as database:
            assert database.execute("SELECT count(*) FROM users").fetchone()[0] == 0


def test_an_imported_hash_costs_as_much_as_ours() -> None:
    """A failed login as an imported user who has not come back (a cost-10 hash) takes as
    much bcrypt work as one as an unknown user (a check at our cost): no telling them apart."""
    hasher = PasswordHasher(12)
    imported = ORIGINAL + go_hash("the right one")

    def cpu_seconds(hashed: str | None) -> float:
        start = time.process_time()  # every thread's CPU: bcrypt runs on a worker thread
        assert asyncio.run(hasher.verify("a wrong one", hashed)) is False
        return time.process_time() - start

    cpu_seconds(imported)  # the padding hash is made on first use
    ratio = statistics.median(cpu_seconds(imported) / cpu_seconds(None) for _ in range(3))
    assert 0.75 < ratio < 1.33, ratio
    malformed = ORIGINAL + "$2a$10$not-really-a-hash"  # (import-original lets none in; still as long)
    ratio = statistics.median(cpu_seconds(malformed) / cpu_seconds(None) for _ in range(3))
    assert 0.75 < ratio < 1.33, ratio
    assert asyncio.run(hasher.verify("the right one", imported)) is True
    assert asyncio.run(hasher.verify("the right one", ORIGINAL + "$2a$10$not-really-a-hash")) is False
    assert hasher.outdated(imported) and not hasher.outdated(asyncio.run(hasher.hash("x")))


def test_a_long_password_checks_as_go_did() -> None:
    """Go's bcrypt of the time read a password's first 72 bytes: such a password logs in."""
    hasher = PasswordHasher(4)
    long_password = "é" * 50  # 100 bytes
    imported = ORIGINAL + bcrypt.hashpw(long_password.encode()[:72], bcrypt.gensalt(10)).decode()
    assert asyncio.run(hasher.verify(long_password, imported)) is True
