"""The PostgreSQL backend: `databases`' asyncpg backend, made safe to cancel
(cancelsafe.py) and fit to run behind a transaction pooler (PgBouncer in transaction mode).

Behind such a pooler each transaction may run on another server connection, so nothing
may live on a connection between transactions: no session settings (the lock timeout is
set in each transaction, SET LOCAL, not as a startup parameter, which PgBouncer refuses)
and no named prepared statements (asyncpg's statement cache is off: each statement is
sent as an unnamed one, parsed and run in one round of the protocol).
"""
from __future__ import annotations

from typing import Any

from databases.backends.postgres import PostgresBackend, PostgresConnection, PostgresTransaction
from databases.core import DatabaseURL

from realtime_llm.store.cancelsafe import ReleaseSurvivesCancel


class PoolablePostgresBackend(PostgresBackend):
    def __init__(self, database_url: DatabaseURL | str, **options: Any) -> None:
        self.lock_timeout_ms = int(options.pop("lock_timeout_ms", 0))
        super().__init__(database_url, statement_cache_size=0, **options)

    def connection(self) -> PoolablePostgresConnection:
        return PoolablePostgresConnection(self, self._dialect)


class PoolablePostgresConnection(ReleaseSurvivesCancel, PostgresConnection):
    def transaction(self) -> LockTimeoutTransaction:
        return LockTimeoutTransaction(self)


class LockTimeoutTransaction(PostgresTransaction):
    """A write waits for a row lock as long as the configured busy timeout, then fails (a
    503), rather than holding the request until the 30 s command timeout."""

    async def start(self, is_root: bool, extra_options: dict[Any, Any]) -> None:
        await super().start(is_root, extra_options)
        backend = self._connection._database
        assert isinstance(backend, PoolablePostgresBackend) and self._connection._connection is not None
        if is_root and backend.lock_timeout_ms:
            await self._connection._connection.execute(f"SET LOCAL lock_timeout = {backend.lock_timeout_ms}")
