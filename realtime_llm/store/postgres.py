"""The PostgreSQL backend: `databases`' asyncpg backend, made safe to cancel
(cancelsafe.py) and fit to run behind a transaction pooler (PgBouncer in transaction mode).

Behind such a pooler each transaction may run on another server connection, so nothing
may live on a connection between transactions: no session settings (PgBouncer refuses them
as startup parameters) and no named prepared statements. So at start-up one connection asks
the server where it listens: if that is not where we dialed, something stands between (a
pooler, or a proxy), and the pool runs without asyncpg's statement cache (each statement
sent unnamed: bench.pg_statements measures the cost) and sets the lock timeout in each
transaction (SET LOCAL). Dialed directly, the cache is on and the lock timeout is a setting
of the connection. A proxy taken for a pooler only costs speed.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

import asyncpg
from databases.backends.postgres import PostgresBackend, PostgresConnection, PostgresTransaction
from databases.core import DatabaseURL

from realtime_llm.store.cancelsafe import ReleaseSurvivesCancel

logger = logging.getLogger("realtime_llm.store")


class PoolablePostgresBackend(PostgresBackend):
    def __init__(self, database_url: DatabaseURL | str, **options: Any) -> None:
        self.lock_timeout_ms = int(options.pop("lock_timeout_ms", 0))
        self.pooled = False
        super().__init__(database_url, **options)

    async def connect(self) -> None:
        self.pooled = await _behind_a_pooler(self._database_url, self._get_connection_kwargs().get("ssl"))
        if self.pooled:
            logger.info("PostgreSQL is reached through a pooler or proxy: no prepared statement cache, "
                        "the lock timeout set in each transaction")
            self._options["statement_cache_size"] = 0
        elif self.lock_timeout_ms:
            self._options["server_settings"] = {"lock_timeout": str(self.lock_timeout_ms)}
        await super().connect()

    def connection(self) -> PoolablePostgresConnection:
        return PoolablePostgresConnection(self, self._dialect)


async def _behind_a_pooler(url: DatabaseURL, ssl: Any) -> bool:
    """Whether the server we reach says it listens elsewhere than where we dialed."""
    connection = await asyncpg.connect(host=url.hostname, port=url.port, user=url.username, password=url.password,
                                       database=url.database, ssl=ssl, statement_cache_size=0, timeout=10)
    try:
        address, port = await connection.fetchrow("SELECT host(inet_server_addr()), inet_server_port()")
    finally:
        await connection.close()
    dialed_socket = url.hostname is None or url.hostname.startswith("/")
    if address is None:  # the server was reached over a Unix socket: by us, or by a pooler
        return not dialed_socket
    if dialed_socket or port != (url.port or 5432):
        return True
    dialed = {info[4][0] for info in await asyncio.get_running_loop().getaddrinfo(url.hostname, port)}
    return ipaddress.ip_address(address) not in {ipaddress.ip_address(str(a).split("%")[0]) for a in dialed}


class PoolablePostgresConnection(ReleaseSurvivesCancel, PostgresConnection):
    def transaction(self) -> LockTimeoutTransaction:
        return LockTimeoutTransaction(self)


class LockTimeoutTransaction(PostgresTransaction):
    """Behind a pooler: a write waits for a row lock as long as the configured busy timeout,
    then fails (a 503), rather than holding the request until the 30 s command timeout."""

    async def start(self, is_root: bool, extra_options: dict[Any, Any]) -> None:
        await super().start(is_root, extra_options)
        backend = self._connection._database
        assert isinstance(backend, PoolablePostgresBackend) and self._connection._connection is not None
        if is_root and backend.pooled and backend.lock_timeout_ms:
            await self._connection._connection.execute(f"SET LOCAL lock_timeout = {backend.lock_timeout_ms}")
