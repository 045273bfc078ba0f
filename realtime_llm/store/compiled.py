"""How the store runs SQL: every statement compiled to the driver's own SQL and run on the
driver in one round trip. Those of the hot path are compiled once (module constants);
one built for a single call (a search, an update of some fields) is compiled then.

Through `databases`, every statement is compiled anew by SQLAlchemy, takes three thread
hops on SQLite (execute, fetch, close the cursor) and comes back wrapped in Records: 1 to
3 ms a statement on this machine, and a request that starts an answer makes a dozen of
them before the first token (bench.relay_overhead). A `Compiled` statement is compiled
once per dialect to the driver's own SQL, with its parameters by name, and runs on the
connection `databases` holds for the task (so inside a transaction it takes part in it),
or on SQLite, when it holds none, straight on the pool's (sqlite_pool.run_on_sqlite): one
hop to the connection's thread on SQLite, one prepared-and-cached statement on asyncpg.
Rows are the driver's own: tuples in the order of the statement's columns.
"""
from __future__ import annotations

import contextlib
import sqlite3
from typing import Any, Callable, Generator, Sequence, TypeVar

from databases import Database
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import ClauseElement

from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.sqlite_pool import run_on_sqlite

T = TypeVar("T")

DIALECTS = {"sqlite": sqlite.dialect(paramstyle="qmark"), "postgresql": postgresql.asyncpg.dialect()}


class Compiled:
    def __init__(self, statement: ClauseElement, *, complete: bool = False) -> None:
        """`complete`: every value is in the statement (one built for a single call), so a
        None among them is a NULL to send, not a parameter left to name."""
        self.statement = statement
        self.complete = complete
        self._forms: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {}

    def form(self, dialect: str) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        """The SQL for `dialect`, its parameters' names in order, and the values of the
        statement's own literals (the 1 of `x + 1`)."""
        if dialect not in self._forms:
            # A complete statement's IN lists are values too: one parameter each.
            compiled = self.statement.compile(dialect=DIALECTS[dialect],
                                              compile_kwargs={"render_postcompile": self.complete})
            literals = {name: value for name, value in compiled.params.items()
                        if value is not None or self.complete}
            names = getattr(compiled, "positiontup", None) or ()  # positional paramstyles only
            self._forms[dialect] = (str(compiled), tuple(names), literals)
        return self._forms[dialect]

    def bind(self, **params: Any) -> Step:
        """The statement with its values, as a transaction script yields it (transaction())."""
        return self, params

    async def fetch_all(self, database: Database, **params: Any) -> list[Sequence[Any]]:
        dialect = database.url.dialect
        sql, names, literals = self.form(dialect)
        args = _arguments(names, literals, params)
        if dialect == "sqlite":
            return await run_on_sqlite(database, _fetch_all, (sql, args))
        async with database.connection() as connection:
            return list(await connection.raw_connection.fetch(sql, *args))

    async def execute_many(self, database: Database, rows: Sequence[dict[str, Any]]) -> None:
        """The statement once for each row of parameters, in one driver call (bulk writes)."""
        dialect = database.url.dialect
        sql, names, literals = self.form(dialect)
        args = [_arguments(names, literals, row) for row in rows]
        if dialect == "sqlite":
            await run_on_sqlite(database, _execute_many, (sql, args))
            return
        async with database.connection() as connection:
            await connection.raw_connection.executemany(sql, args)

    async def fetch_one(self, database: Database, **params: Any) -> Sequence[Any] | None:
        rows = await self.fetch_all(database, **params)
        return rows[0] if rows else None

    async def fetch_val(self, database: Database, **params: Any) -> Any:
        row = await self.fetch_one(database, **params)
        return None if row is None else row[0]


Step = tuple[Compiled, dict[str, Any]]
# A transaction as a generator: it yields each statement (Compiled.bind) and is sent its rows.
Script = Generator[Step, list[Sequence[Any]], T]


async def transaction(database: Database, script: Callable[[], Script[T]]) -> T:
    """Run the statements `script` yields as one transaction (committed if it returns,
    rolled back if it raises) and return what it returns. A cancellation does not cut it
    short: it waits for the transaction's end (cancelsafe.atomically), which on SQLite,
    already on its thread, is the commit.

    On SQLite the whole transaction is one call on its connection's thread, the script
    running there: through aiosqlite every statement, BEGIN and COMMIT included, is a hop
    to that thread and back (about 50 µs of the event loop's CPU each, bench.relay_cpu),
    and a message's transaction took seven. On PostgreSQL it runs statement by statement."""
    if database.url.dialect == "sqlite":
        async def run() -> T:
            return await run_on_sqlite(database, _in_sqlite, script())
    else:
        async def run() -> T:
            async with database.transaction():
                return await _in_postgres(database, script())
    return await atomically(run)


def _fetch_all(connection: sqlite3.Connection, statement: tuple[str, list[Any]]) -> list[Sequence[Any]]:
    return connection.execute(*statement).fetchall()


def _execute_many(connection: sqlite3.Connection, statement: tuple[str, list[list[Any]]]) -> None:
    connection.executemany(*statement).close()


def _in_sqlite(connection: sqlite3.Connection, steps: Script[T]) -> T:
    connection.execute("BEGIN IMMEDIATE")  # writers queue for the busy timeout (sqlite_pool.py)
    try:
        try:
            statement, params = next(steps)
            while True:
                sql, names, literals = statement.form("sqlite")
                rows = connection.execute(sql, _arguments(names, literals, params)).fetchall()
                statement, params = steps.send(rows)
        except StopIteration as end:
            result: T = end.value
        connection.execute("COMMIT")
        return result
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the first error is the one to tell
                connection.execute("ROLLBACK")  # (and the pool rolls back or closes it again)
        raise


async def _in_postgres(database: Database, steps: Script[T]) -> T:
    try:
        statement, params = next(steps)
        while True:
            statement, params = steps.send(await statement.fetch_all(database, **params))
    except StopIteration as end:
        return end.value  # type: ignore[no-any-return]


def _arguments(names: tuple[str, ...], literals: dict[str, Any], params: dict[str, Any]) -> list[Any]:
    return [params[name] if name in params else literals[name] for name in names]  # KeyError: one missing


async def fetch_all(database: Database, statement: ClauseElement) -> list[Sequence[Any]]:
    """A statement built for this call, its values in it: compiled here, run the same way."""
    return await Compiled(statement, complete=True).fetch_all(database)


async def fetch_one(database: Database, statement: ClauseElement) -> Sequence[Any] | None:
    rows = await fetch_all(database, statement)
    return rows[0] if rows else None
