"""The real SQL databases tests run against: a SQLite file, and a PostgreSQL database of their own."""
from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_HELP = (
    "PostgreSQL is not reachable at {url} ({error}); start it "
    "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or point "
    "TEST_POSTGRES_URL at one where the user may CREATE DATABASE"
)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def create_postgres_database() -> str:
    """A new, empty database for this test session; fails loudly when PostgreSQL is absent."""
    name = f"rtllm_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        raise RuntimeError(POSTGRES_HELP.format(url=POSTGRES_ADMIN_URL, error=exc)) from None
    return _with_database(POSTGRES_ADMIN_URL, name)


def drop_postgres_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
