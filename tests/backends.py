"""The real SQL databases tests run against: a SQLite file, and a PostgreSQL database of their own."""
from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
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


REDIS_HELP = (
    "Redis is not reachable at {url} ({error}); start it (redis-server --daemonize yes --port 6379 "
    "--save '' --appendonly no) or set REDIS_URL to one"
)
_redis_checked: dict[str, str] = {}


def redis_url() -> str:
    """The Redis tests use: REDIS_URL, default the local one; if none answers, a private
    redis-server when the binary is at hand; else the tests fail with a line saying why."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if url not in _redis_checked:
        import atexit

        import redis

        try:
            redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).ping()
            _redis_checked[url] = url
        except redis.RedisError as exc:
            try:
                private = PrivateRedis()
            except RuntimeError as missing:
                raise RuntimeError(REDIS_HELP.format(url=url, error=f"{exc}; {missing}")) from None
            atexit.register(private.stop)
            _redis_checked[url] = private.url
    return _redis_checked[url]


class PrivateRedis:
    """A redis-server of the tests' own on a free port, for tests that flush or stop Redis."""

    def __init__(self, port: int | None = None) -> None:
        import shutil
        import subprocess

        from tests.servers import free_port

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH; install it (apt-get install redis-server)")
        self.port = port or free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        import time

        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


PGBOUNCER_HELP = "pgbouncer is not installed: apt-get install pgbouncer (.ci/run installs it when missing)"


class PgBouncer:
    """PgBouncer in transaction mode in front of the tests' PostgreSQL, on a free port, with
    a small pool, so that one client's transactions run on different server connections."""

    def __init__(self, pool_size: int = 2) -> None:
        import os
        import shutil
        import subprocess
        import tempfile
        import time

        from tests.servers import free_port

        binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
        if binary is None:
            raise RuntimeError(PGBOUNCER_HELP)
        target = urlsplit(POSTGRES_ADMIN_URL)
        self.port = free_port()
        # Its own directory, readable by the user it runs as (pytest's are its owner's only).
        workdir = self.workdir = Path(tempfile.mkdtemp(prefix="rtllm-pgbouncer-"))
        os.chmod(workdir, 0o755)
        (workdir / "userlist.txt").write_text(f'"{target.username}" ""\n')
        (workdir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={target.hostname} port={target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {workdir / 'userlist.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 1000\n"
            f"logfile = {workdir / 'pgbouncer.log'}\n"
        )
        os.chmod(workdir, 0o777)  # its log is written as that user
        # PgBouncer will not run as root: it drops to the postgres user there.
        as_user = ["-u", "postgres"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen([binary, *as_user, str(workdir / "pgbouncer.ini")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                asyncio.run(_ping(self.port))
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
                if self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"pgbouncer exited with {self.process.returncode}") from None
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("pgbouncer did not start")

    def url(self, direct_url: str) -> str:
        """`direct_url` (a database on the tests' PostgreSQL) reached through PgBouncer."""
        parts = urlsplit(direct_url)
        return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{self.port}"))

    def log(self) -> str:
        path = self.workdir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        import shutil

        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


async def _ping(port: int) -> None:
    target = urlsplit(POSTGRES_ADMIN_URL)
    connection = await asyncpg.connect(host="127.0.0.1", port=port, user=target.username,
                                       database=target.path.lstrip("/"), timeout=2, statement_cache_size=0)
    await connection.close()
