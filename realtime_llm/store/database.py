"""Opening the SQL database and bringing its schema up to date."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import sqlalchemy as sa
from databases import Database

from realtime_llm.config import Settings
from realtime_llm.store import schema

logger = logging.getLogger("realtime_llm.store")


MIGRATION_LOCK_ID = 0x72746C6C6D  # "rtllm": serialises concurrent start-ups on PostgreSQL


class AppDatabase(Database):
    """`databases.Database` with a pooled, configured SQLite backend."""

    SUPPORTED_BACKENDS = {
        **Database.SUPPORTED_BACKENDS,
        "sqlite": "realtime_llm.store.sqlite_pool:PooledSQLiteBackend",
        "postgresql": "realtime_llm.store.postgres:PoolablePostgresBackend",
    }


def create_database(settings: Settings) -> Database:
    url = settings.database_url
    if settings.uses_sqlite:
        Path(settings.sqlite.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return AppDatabase(
            url,
            max_open=settings.sqlite.max_open_conns,
            max_idle=settings.sqlite.max_idle_conns,
            max_lifetime=settings.sqlite.conn_max_lifetime,
            busy_timeout_ms=settings.sqlite.busy_timeout_ms,
        )
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    # A write in a transaction waits for a lock as long as SQLite's busy timeout (postgres.py).
    return AppDatabase(url, min_size=1, max_size=settings.sqlite.max_open_conns, command_timeout=30,
                       lock_timeout_ms=settings.sqlite.busy_timeout_ms)


async def migrate(database: Database) -> int:
    """Create the tables on a new database, or run the upgrades an older one lacks."""
    if database.url.dialect != "sqlite":
        return await _migrate(database)
    # Rebuilding a table (rebuild_sqlite) drops it, and with foreign keys on, dropping it
    # would delete every row that refers to it. The pragma has no effect inside a
    # transaction, so it is set on the migration's own connection around it.
    async with database.connection():
        await database.execute(sa.text("PRAGMA foreign_keys=OFF"))
        try:
            return await _migrate(database)
        finally:
            await database.execute(sa.text("PRAGMA foreign_keys=ON"))


async def _migrate(database: Database) -> int:
    dialect = database.url.dialect
    async with database.transaction():
        if dialect == "postgresql":
            await database.execute(sa.text("SET LOCAL lock_timeout = 0"))  # another process may be migrating
            await database.execute(sa.text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})"))
        version = await _current_version(database)
        if version is not None and version > schema.SCHEMA_VERSION:
            raise RuntimeError(
                f"the database has schema version {version}, newer than this program's "
                f"{schema.SCHEMA_VERSION}; upgrade realtime-llm"
            )
        if version is None:
            await _create_tables(database, schema.BASELINE)
            pending = schema.UPGRADES
        else:
            pending = schema.UPGRADES[version - 1:]
        for upgrade in pending:
            if version is not None:
                await _create_tables(database, upgrade.creates)
                for statement in upgrade.alter:
                    if not await _adds_an_existing_column(database, statement):
                        await database.execute(sa.text(statement))
                if dialect == "sqlite":
                    await rebuild_sqlite_tables(database, upgrade.rebuild_sqlite)
            await _run_extras(database, upgrade.extras.get(dialect, ()))
        if version is None:
            await database.execute(schema.schema_version.insert().values(version=schema.SCHEMA_VERSION))
            logger.info("created database schema version %d", schema.SCHEMA_VERSION)
        elif version < schema.SCHEMA_VERSION:
            await database.execute(schema.schema_version.update().values(version=schema.SCHEMA_VERSION))
            logger.info("upgraded database schema %d -> %d", version, schema.SCHEMA_VERSION)
        return schema.SCHEMA_VERSION


async def _create_tables(database: Database, tables: tuple[sa.Table, ...]) -> None:
    for table in tables:
        await database.execute(sa.schema.CreateTable(table, if_not_exists=True))
        for index in table.indexes:
            await database.execute(sa.schema.CreateIndex(index, if_not_exists=True))


ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", re.IGNORECASE)


async def _adds_an_existing_column(database: Database, statement: str) -> bool:
    """An upgrade's ADD COLUMN that a SQLite table rebuilt by an earlier upgrade already
    has (a rebuild takes today's definition from schema.py, later columns included)."""
    added = ADD_COLUMN.match(statement)
    if added is None or database.url.dialect != "sqlite":
        return False
    table, column = added.groups()
    return column in {row[1] for row in await database.fetch_all(sa.text(f"PRAGMA table_info({table})"))}


async def rebuild_sqlite_tables(database: Database, names: tuple[str, ...]) -> None:
    """Recreate each table from its definition in schema.py (SQLite's ALTER TABLE cannot add
    AUTOINCREMENT), keeping its rows and their ids; the caller has foreign keys off."""
    for name in names:
        table = schema.metadata.tables[name]
        rebuilt = f"{name}__rebuild"
        existing = {row[1] for row in await database.fetch_all(sa.text(f"PRAGMA table_info({name})"))}
        columns = ", ".join(c.name for c in table.columns if c.name in existing)
        ddl = str(sa.schema.CreateTable(table).compile(dialect=_sqlite_dialect()))
        ddl = re.sub(rf"CREATE TABLE {name}\b", f"CREATE TABLE {rebuilt}", ddl, count=1)
        await database.execute(sa.text(ddl))
        # Rows with their ids: AUTOINCREMENT's counter starts above the highest one copied.
        await database.execute(sa.text(f"INSERT INTO {rebuilt} ({columns}) SELECT {columns} FROM {name}"))
        await database.execute(sa.text(f"DROP TABLE {name}"))
        await database.execute(sa.text(f"ALTER TABLE {rebuilt} RENAME TO {name}"))
        for index in table.indexes:
            await database.execute(sa.schema.CreateIndex(index, if_not_exists=True))
    if names and await database.fetch_all(sa.text("PRAGMA foreign_key_check")):
        raise RuntimeError("schema upgrade left rows whose foreign keys point nowhere; nothing was changed")


def _sqlite_dialect() -> sa.engine.Dialect:
    from sqlalchemy.dialects import sqlite

    return sqlite.dialect()


async def _run_extras(database: Database, statements: tuple[str, ...]) -> None:
    """Optional parts (search indexes): one that the database refuses (a missing
    privilege for CREATE EXTENSION, say) is logged and left out, in a savepoint."""
    if not statements:
        return
    try:
        async with database.transaction():
            for statement in statements:
                await database.execute(sa.text(statement))
    except Exception as exc:
        logger.warning("search index not created (%s: %s); search will scan instead",
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")


async def has_sqlite_search_index(database: Database) -> bool:
    """Whether migrate could create SQLite's FTS5 trigram index (SQLite 3.34 or later),
    written behind the messages (schema.SEARCH_SQLITE_BEHIND)."""
    if database.url.dialect != "sqlite":
        return False
    found = await database.fetch_val(sa.text(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('messages_fts', 'messages_fts_pending')"))
    return int(found) == 2


async def _current_version(database: Database) -> int | None:
    await database.execute(sa.schema.CreateTable(schema.schema_version, if_not_exists=True))
    row = await database.fetch_one(sa.select(schema.schema_version.c.version))
    return None if row is None else int(row[0])
