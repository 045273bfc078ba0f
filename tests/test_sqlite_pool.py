"""The pooled SQLite backend's connections given back: at once when nothing needs a wait
(reused, the slot free again), else rolled back or closed."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from realtime_llm.store.sqlite_pool import SQLiteConnectionPool

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pool(tmp_path: Path, **options: float) -> SQLiteConnectionPool:
    settings = {"max_open": 1, "max_idle": 1, "max_lifetime": 3600.0, "busy_timeout_ms": 1000, **options}
    return SQLiteConnectionPool(str(tmp_path / "pool.db"), **settings)  # type: ignore[arg-type]


async def test_a_connection_out_of_a_transaction_goes_back_at_once_and_is_reused(tmp_path: Path) -> None:
    connections = pool(tmp_path)
    try:
        first = await connections.acquire()
        await first.execute("CREATE TABLE t (x)")
        assert connections.release_nowait(first)
        async with asyncio.timeout(1):  # one slot: it is free again
            again = await connections.acquire()
        assert again is first
        await connections.release(again)
    finally:
        await connections.close()


async def test_a_connection_in_a_transaction_is_not_given_back_without_its_rollback(tmp_path: Path) -> None:
    connections = pool(tmp_path)
    try:
        connection = await connections.acquire()
        await connection.execute("CREATE TABLE t (x)")
        await connection.execute("BEGIN IMMEDIATE")
        await connection.execute("INSERT INTO t VALUES (1)")
        assert not connections.release_nowait(connection)  # a wait is needed: the rollback
        await connections.release(connection)
        connection = await connections.acquire()
        assert await connection.execute_fetchall("SELECT count(*) FROM t") == [(0,)]
        await connections.release(connection)
    finally:
        await connections.close()


@pytest.mark.parametrize("options", [{"max_lifetime": 0.0}, {"max_idle": 0}])
async def test_a_connection_past_its_lifetime_or_beyond_the_idle_bound_is_closed(
        tmp_path: Path, options: dict[str, float]) -> None:
    connections = pool(tmp_path, **options)
    try:
        connection = await connections.acquire()
        assert not connections.release_nowait(connection)
        await connections.release(connection)
        fresh = await connections.acquire()
        assert fresh is not connection
        await connections.release(fresh)
    finally:
        await connections.close()


async def test_work_run_on_the_pool_gives_its_connection_back_rolled_back_after_an_error_or_a_cancel(
        tmp_path: Path) -> None:
    """SQLiteConnectionPool.run, the path of every statement outside a `databases`
    transaction (run_on_sqlite): the one connection comes back after work that failed
    inside a transaction, or was cancelled before it began one (it goes on on the
    connection's thread), with that transaction rolled back."""
    def insert(connection: sqlite3.Connection, before: Callable[[], None]) -> None:
        before()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO t VALUES (1)")

    def fail(connection: sqlite3.Connection, _: None) -> None:
        insert(connection, lambda: None)
        raise ValueError("no")

    def count(connection: sqlite3.Connection, _: None) -> list[Any]:
        return connection.execute("SELECT count(*) FROM t").fetchall()

    connections = pool(tmp_path)
    try:
        await connections.run(lambda connection, _: connection.execute("CREATE TABLE t (x)"), None)
        with pytest.raises(ValueError):
            await connections.run(fail, None)
        running = asyncio.create_task(connections.run(insert, lambda: time.sleep(0.4)))
        await asyncio.sleep(0.2)  # the work is under way on the connection's thread, not yet in its transaction
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        async with asyncio.timeout(2):  # one slot: free again
            assert await connections.run(count, None) == [(0,)]
    finally:
        await connections.close()
