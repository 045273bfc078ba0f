"""A pooled SQLite backend for `databases`.

The stock backend opens a new aiosqlite connection (and thread) for every query, which
costs a connection set-up each time and loses per-connection settings such as
`foreign_keys`. This one keeps up to `max_open_conns` connections open, configures each
once, and starts write transactions with BEGIN IMMEDIATE so that concurrent writers wait
for the busy timeout instead of failing on a lock upgrade.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
import typing

import aiosqlite
from databases import Database
from databases.backends.sqlite import SQLiteBackend, SQLiteConnection, SQLiteTransaction
from databases.core import DatabaseURL

from realtime_llm.store.cancelsafe import ReleaseSurvivesCancel, atomically

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


T = typing.TypeVar("T")


def on_connection_thread(connection: aiosqlite.Connection, work: typing.Callable[[sqlite3.Connection, typing.Any], T],
                         argument: typing.Any) -> typing.Awaitable[T]:
    """`work(the sqlite3 connection, argument)` on the connection's own thread, in one hop.
    aiosqlite has no public call for this; `_execute` is the one each of its own methods
    goes through (0.22), and every test that saves a message runs this."""
    return connection._execute(work, connection._conn, argument)  # type: ignore[no-untyped-call]


def _roll_back(connection: sqlite3.Connection, _: None) -> None:
    if connection.in_transaction:
        connection.rollback()


class SQLiteConnectionPool:
    def __init__(
        self,
        path: str,
        *,
        max_open: int,
        max_idle: int,
        max_lifetime: float,
        busy_timeout_ms: int,
    ) -> None:
        self.path = path
        self.max_idle = max_idle
        self.max_lifetime = max_lifetime
        self.busy_timeout_ms = busy_timeout_ms
        self._slots = asyncio.Semaphore(max_open)
        self._idle: list[tuple[float, aiosqlite.Connection]] = []
        self._born: dict[int, float] = {}
        self._open_connections: dict[int, aiosqlite.Connection] = {}

    async def acquire(self) -> aiosqlite.Connection:
        await self._slots.acquire()
        try:
            while self._idle:
                born, connection = self._idle.pop()
                if time.monotonic() - born < self.max_lifetime:
                    return connection
                await self._close(connection)
            return await self._open()
        except BaseException:
            self._slots.release()
            raise

    async def run(self, work: typing.Callable[[sqlite3.Connection, typing.Any], T], argument: typing.Any) -> T:
        """`work(a connection, argument)` on an idle connection's thread, in one hop; the
        connection goes back as `databases` gives it back (PooledSQLiteConnection.release),
        a cancellation waiting for that."""
        connection = await self.acquire()
        try:
            return await on_connection_thread(connection, work, argument)
        except asyncio.CancelledError:
            # The work may still be under way on the connection's thread: a rollback of
            # what it leaves open is queued behind it, so the next user gets a clean one.
            await atomically(lambda: on_connection_thread(connection, _roll_back, None))
            raise
        finally:
            if not self.release_nowait(connection):
                await atomically(lambda: self.release(connection))

    def release_nowait(self, connection: aiosqlite.Connection) -> bool:
        """Give a connection back without waiting, if nothing needs to be awaited (it is
        not in a transaction, and it stays open): True if it was given back."""
        born = self._born.get(id(connection), 0.0)
        try:
            in_transaction = connection.in_transaction
        except Exception:  # closed under its user (the pool closing): release() closes and frees it
            return False
        if in_transaction or time.monotonic() - born >= self.max_lifetime or len(self._idle) >= self.max_idle:
            return False
        self._idle.append((born, connection))
        self._slots.release()
        return True

    async def release(self, connection: aiosqlite.Connection) -> None:
        try:
            if connection.in_transaction:
                await connection.rollback()
            born = self._born.get(id(connection), 0.0)
            fresh = time.monotonic() - born < self.max_lifetime
            if fresh and len(self._idle) < self.max_idle:
                self._idle.append((born, connection))
            else:
                await self._close(connection)
        except Exception:
            await self._close(connection)
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Close every connection, idle or not: each holds a non-daemon thread that would
        otherwise keep the process from exiting."""
        self._idle = []
        for connection in list(self._open_connections.values()):
            await self._close(connection)

    async def _open(self) -> aiosqlite.Connection:
        connection = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000
        )
        self._open_connections[id(connection)] = connection
        try:
            for pragma in (f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}", *PRAGMAS):
                await self._configure(connection, pragma)
        except BaseException:
            await asyncio.shield(self._close(connection))
            raise
        self._born[id(connection)] = time.monotonic()
        return connection

    async def _configure(self, connection: aiosqlite.Connection, pragma: str) -> None:
        """Run a PRAGMA, waiting out a lock. Switching a new file to WAL needs the database
        to itself, and SQLite answers "locked" at once instead of calling the busy handler,
        so connections opened together (pool start, several worker processes starting on
        one new file) would fail: retry them within the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                await connection.execute(pragma)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.02)

    async def _close(self, connection: aiosqlite.Connection) -> None:
        self._born.pop(id(connection), None)
        self._open_connections.pop(id(connection), None)
        try:
            await connection.close()
        except Exception:  # closing a broken connection must not mask the first error
            pass


class ImmediateTransaction(SQLiteTransaction):
    async def start(self, is_root: bool, extra_options: dict[typing.Any, typing.Any]) -> None:
        if not is_root:
            return await super().start(is_root, extra_options)
        self._is_root = True
        assert self._connection._connection is not None
        await self._connection._connection.execute("BEGIN IMMEDIATE")


class PooledSQLiteConnection(ReleaseSurvivesCancel, SQLiteConnection):
    def transaction(self) -> ImmediateTransaction:
        return ImmediateTransaction(self)

    async def release(self) -> None:
        """Back to the pool at once when that needs no wait (the usual case), so no
        cancellation can land in it; else in a task a cancellation does not cut short
        (ReleaseSurvivesCancel). That task and its loop turns were most of what `databases`
        added to a statement: `SELECT 1` through it took 75-83 µs of CPU before, 54 after,
        and 39-45 on aiosqlite alone (a throwaway timeit under uvloop). (Statements outside
        a `databases` transaction no longer come this way: run_on_sqlite.)"""
        if self._connection is not None and self._pool.release_nowait(self._connection):  # type: ignore[attr-defined]
            self._connection = None
            return
        await super().release()


async def run_on_sqlite(database: Database, work: typing.Callable[[sqlite3.Connection, typing.Any], T],
                        argument: typing.Any) -> T:
    """`work(the sqlite3 connection, argument)` on a connection's thread, in one hop: on
    the connection `databases` holds for this task if it holds one (inside its
    `transaction()`, which the work then takes part in), else straight on the pool's. A
    `databases` Connection made for one statement (three asyncio.Locks, the task looked up
    in a WeakKeyDictionary three times) cost more of the event loop than the hop: a
    `SELECT 1` took 44 µs of its CPU through it, 27 straight (a throwaway timeit under
    uvloop), and a turn makes three."""
    backend, task = database._backend, asyncio.current_task()
    if (isinstance(backend, PooledSQLiteBackend) and task is not None and database._global_connection is None
            and database._connection_map.get(task) is None):
        return await backend.pool.run(work, argument)
    async with database.connection() as connection:
        return await on_connection_thread(connection.raw_connection, work, argument)


class PooledSQLiteBackend(SQLiteBackend):
    def __init__(self, database_url: DatabaseURL | str, **options: typing.Any) -> None:
        super().__init__(database_url)
        self.pool = SQLiteConnectionPool(DatabaseURL(database_url).database, **options)
        self._pool = self.pool  # type: ignore[assignment]  # (where SQLiteBackend's connections look)

    async def disconnect(self) -> None:
        await self.pool.close()

    def connection(self) -> PooledSQLiteConnection:
        return PooledSQLiteConnection(self.pool, self._dialect)  # type: ignore[arg-type]
