"""PostgreSQL behind PgBouncer in transaction mode (a pool of 2 server connections): start-up
and the schema upgrade under its lock, and the server's work through it — where each
transaction may run on another server connection, so nothing may be left on one (no
session settings, no named prepared statements)."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from realtime_llm.store.postgres import PoolablePostgresBackend
from tests.backends import POSTGRES_ADMIN_URL, PgBouncer, create_postgres_database, drop_postgres_database
from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.test_chat import assert_complete, chat_events, history, new_chat
from tests.test_files import uploaded
from tests.wsclient import Socket


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    pooler = PgBouncer()
    yield pooler
    pooler.stop()


@pytest.fixture
def pooled_database(bouncer: PgBouncer) -> Iterator[str]:
    """A fresh database, reached through PgBouncer."""
    direct = create_postgres_database()
    yield bouncer.url(direct)
    drop_postgres_database(direct)


def server_on(database: str, upstream: FakeUpstream, workdir: Path) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(write_config(workdir / "config.yaml", base_config(workdir, database, upstream)), workdir)


def test_two_servers_start_together_on_a_new_database(pooled_database: str, upstream: FakeUpstream,
                                                      tmp_path: Path) -> None:
    """Both create or find the schema (the upgrade holds a transaction-scoped advisory lock,
    which a transaction pooler keeps) and serve the same data."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, pooled_database, upstream))
    servers = [ServerProcess(config, tmp_path) for _ in range(2)]
    errors: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start()
        except BaseException as exc:  # reported below, with the log
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        a, b = Api(servers[0].url), Api(servers[1].url)
        headers, cid = new_chat(a)
        chat_events(a, headers, cid, "#fake tokens=3")
        assert len(history(b, headers, cid)) == 2
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def pooled_server(pooled_database: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[ServerProcess]:
    server = server_on(pooled_database, upstream, tmp_path).start()
    yield server
    server.stop()


def test_a_conversation_end_to_end(pooled_server: ServerProcess) -> None:
    """Chat over SSE and WebSocket, regenerate, edit, switch branch, fork, search, a file
    carried and downloaded: each a few transactions, none tied to a server connection."""
    api = Api(pooled_server.url)
    headers, cid = new_chat(api, title="through the pooler")
    assert_complete(chat_events(api, headers, cid, "#fake tokens=5"), cid)
    with Socket(pooled_server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "regenerate"})
        assert socket.recv_until("full_response")[-1]["event"] == "full_response"
        first = history(api, headers, cid)[0]["message_id"]
        socket.send({"type": "message", "content": "#fake tokens=2", "edit_message_id": first})
        socket.recv_until("full_response")
    messages = history(api, headers, cid)
    assert [m["content"] for m in messages] == ["#fake tokens=2", "t0 t1 "]
    switched = api.http.post(f"/api/conversations/branch/{cid}", headers=headers, json={"message_id": first})
    assert switched.status_code == 200, switched.text
    assert history(api, headers, cid)[0]["message_id"] == first
    forked = api.http.post(f"/api/conversations/fork/{cid}", headers=headers, json={"message_id": first})
    assert forked.status_code == 200, forked.text
    found = api.http.get("/api/conversations/list", headers=headers, params={"q": "pooler"}).json()
    assert {c["conversation_id"] for c in found} >= {cid}
    stored = uploaded(api, headers, b"a note carried through the pooler\n", "note.txt")
    response = api.http.post(f"/api/chat/{cid}", headers=headers,
                             json={"message": "#fake tokens=2", "attachments": [stored["file_id"]]})
    assert response.status_code == 200, response.text
    download = api.http.get(f"/api/files/{stored['file_id']}", headers=headers)
    assert download.content == b"a note carried through the pooler\n"


def test_many_clients_share_two_server_connections(pooled_server: ServerProcess) -> None:
    """Twelve clients at once, each registering, chatting and reading back, over two
    server connections: asyncpg's prepared statements (had they been named and cached)
    would be looked for on connections that never saw them."""
    api = Api(pooled_server.url)

    def one_client(n: int) -> int:
        headers, cid = new_chat(api)
        for i in range(3):
            assert_complete(chat_events(api, headers, cid, f"#fake tokens={i + 2}"), cid)
        assert len(history(api, headers, cid)) == 6
        return cid

    with ThreadPoolExecutor(12) as pool:
        cids = list(pool.map(one_client, range(12)))
    assert len(set(cids)) == 12


def test_only_a_pooler_turns_the_statement_cache_off(pooled_database: str, bouncer: PgBouncer) -> None:
    """Dialed directly, PostgreSQL says it listens where we dialed: prepared statements are
    cached and the lock timeout is a connection setting; through PgBouncer, neither, and
    each transaction sets the lock timeout itself."""
    direct = pooled_database.replace(f":{bouncer.port}/", f":{urlsplit(POSTGRES_ADMIN_URL).port or 5432}/")

    async def pooled(url: str) -> tuple[bool, str]:
        backend = PoolablePostgresBackend(url, lock_timeout_ms=1234, min_size=1, max_size=1)
        await backend.connect()
        try:
            connection = backend.connection()
            await connection.acquire()
            try:  # a transaction as the store opens one
                transaction = connection.transaction()
                await transaction.start(is_root=True, extra_options={})
                timeout = await connection.raw_connection.fetchval("SHOW lock_timeout")
                await transaction.rollback()
            finally:
                await connection.release()
            return backend.pooled, timeout
        finally:
            await backend.disconnect()

    assert asyncio.run(pooled(direct)) == (False, "1234ms")  # a setting of the connection
    assert asyncio.run(pooled(pooled_database)) == (True, "1234ms")  # SET LOCAL in the transaction
