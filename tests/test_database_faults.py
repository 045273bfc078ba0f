"""The database busy: another client holds its write lock for longer than the server waits.

Writes answer 503 with Retry-After (an `error` event on a WebSocket, which stays open),
reads go on, nothing is half-saved, and an answer that ends while the lock is held is
saved once it is released instead of being lost. On SQLite and on PostgreSQL.
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Iterator

import asyncpg
import pytest

from tests.conftest import PASSWORD, Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import parse_stream
from tests.test_chat import chat
from tests.wsclient import Socket

BUSY_TIMEOUT_MS = 300


class WriteLock:
    """Another client of the database holding its write lock until `release()`.

    SQLite: BEGIN EXCLUSIVE (in WAL mode readers go on). PostgreSQL: LOCK TABLE ... IN
    EXCLUSIVE MODE on the tables every write touches (plain SELECTs go on)."""

    def __init__(self, database: str, sqlite_path: Path) -> None:
        self.database = database
        self.sqlite_path = sqlite_path
        self._held = threading.Event()
        self._release = threading.Event()
        self._thread: threading.Thread | None = None
        self._sqlite: sqlite3.Connection | None = None

    def __enter__(self) -> WriteLock:
        if self.database == "sqlite":
            self._sqlite = sqlite3.connect(self.sqlite_path, isolation_level=None, check_same_thread=False)
            self._sqlite.execute("BEGIN EXCLUSIVE")
        else:
            self._thread = threading.Thread(target=asyncio.run, args=(self._hold_postgres(),), daemon=True)
            self._thread.start()
            assert self._held.wait(10), "could not lock the PostgreSQL tables"
        return self

    async def _hold_postgres(self) -> None:
        connection = await asyncpg.connect(self.database, timeout=5)
        try:
            async with connection.transaction():
                await connection.execute("LOCK TABLE users, conversations, messages IN EXCLUSIVE MODE")
                self._held.set()
                while not self._release.is_set():
                    await asyncio.sleep(0.02)
        finally:
            await connection.close()

    def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.rollback()
            self._sqlite.close()
            self._sqlite = None
        if self._thread is not None:
            self._release.set()
            self._thread.join(10)
            self._thread = None

    def __exit__(self, *exc: object) -> None:
        self.release()


@pytest.fixture
def busy_server(database: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    config = base_config(tmp_path, database, upstream)
    config["sqlite"] = {**config.get("sqlite", {}), "busy_timeout_ms": BUSY_TIMEOUT_MS}
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    yield server, tmp_path / "chat.db"
    server.stop()


def assert_busy(response) -> None:  # noqa: ANN001
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_busy"
    assert int(response.headers["retry-after"]) >= 1


def test_writes_wait_then_answer_503_and_nothing_is_half_saved(
        busy_server: tuple[ServerProcess, Path], database: str) -> None:
    server, path = busy_server
    api = Api(server.url)
    headers = api.new_user()
    cid = api.create_conversation(headers, model="fake-model")["conversation_id"]
    marker = uuid.uuid4().hex
    with WriteLock(database, path), Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        assert_busy(api.http.post("/api/users/register", json={"username": f"u_{marker[:8]}", "password": PASSWORD}))
        assert_busy(chat(api, headers, cid, f"#fake tokens=2\n{marker} over HTTP"))
        socket.send({"type": "message", "content": f"#fake tokens=2\n{marker} over WebSocket"})
        error = socket.recv()
        assert error["event"] == "error" and error["code"] == "database_busy", error
        socket.send({"type": "ping"})  # the socket stays open
        assert socket.recv()["event"] == "pong"
        # Reads go on while the lock is held.
        assert api.http.get("/api/conversations/list", headers=headers).status_code == 200
        assert api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["messages"] == []
        assert api.http.get("/healthz").status_code == 200
    # Released: the same writes work, and none of the refused ones left anything behind.
    assert api.http.post("/api/users/register",
                         json={"username": f"u_{marker[:8]}", "password": PASSWORD}).status_code == 201
    assert chat(api, headers, cid, "#fake tokens=2\nnow").status_code == 200
    messages = api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert marker not in str(messages)
    assert "Traceback" not in server.log()
    api.http.close()


def test_an_answer_ending_while_the_lock_is_held_is_saved_after(
        busy_server: tuple[ServerProcess, Path], database: str) -> None:
    server, path = busy_server
    api = Api(server.url)
    headers = api.new_user()
    cid = api.create_conversation(headers, model="fake-model")["conversation_id"]
    with Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=6 delay_ms=100"})
        assert socket.recv()["event"] == "user_message"
        assert socket.recv()["event"] == "message"  # the answer is under way: now lock
        with WriteLock(database, path) as lock:
            threading.Timer(2.0, lock.release).start()  # ~1.5 s after the answer ends
            events = socket.recv_until("full_response", timeout=20)
        kinds = [e["event"] for e in events]
        assert "error" not in kinds and kinds[-2:] == ["done", "full_response"], kinds
        answer = events[-1]["data"]
        assert answer.startswith("t0 t1") and answer.endswith("t5 ")
    messages = api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"] == answer
    assert "not saved yet" in server.log() and "Traceback" not in server.log()
    api.http.close()


def test_a_message_not_saved_closes_the_upstream_request_asked_meanwhile(
        busy_server: tuple[ServerProcess, Path], database: str, upstream: FakeUpstream) -> None:
    """From the second turn the prompt is the path kept in memory and the new message, so
    the upstream is asked while the message is saved (DESIGN.md, Generation lifecycle). A
    save that fails closes that request: a 503, nothing saved, nothing published; and the
    next turn's prompt is the one a read of the history gives."""
    server, path = busy_server
    api = Api(server.url)
    headers = api.new_user()
    cid = api.create_conversation(headers, model="fake-model")["conversation_id"]
    assert chat(api, headers, cid, "#fake tokens=2\nfirst").status_code == 200
    marker = f"#fake tokens=40 delay_ms=50\n{uuid.uuid4().hex}"
    with WriteLock(database, path), Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        assert_busy(chat(api, headers, cid, marker))
        asked = upstream.request_for(marker)  # asked before the save failed
        assert upstream.wait_for(lambda: asked.closed_early, 5), "the upstream request was left running"
        socket.send({"type": "ping"})
        assert socket.recv()["event"] == "pong"  # nothing was published before it
    events = parse_stream(chat(api, headers, cid, "#fake tokens=2\nsecond").content)
    assert [e["event"] for e in events][-2:] == ["done", "full_response"]
    messages = api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["messages"]
    assert [m["content"] for m in messages] == ["#fake tokens=2\nfirst", "t0 t1 ", "#fake tokens=2\nsecond", "t0 t1 "]
    sent = upstream.request_for("#fake tokens=2\nsecond").body["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [(m["role"], m["content"]) for m in messages[:-1]]
    assert "Traceback" not in server.log()
    api.http.close()
