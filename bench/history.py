"""History of a 10,000-message conversation (issue 7, figure 5; target: median <= 50 ms).

    .venv/bin/python -m bench.history [--messages 10000] [--requests 30]

For SQLite and PostgreSQL: one server process (in-process broker), a conversation filled
with N messages of 200 characters written straight into its tables, then
`GET /api/conversations/history/{id}` N times in sequence. The baseline in the same run is
`GET /api/users/me` (authenticated, one row) on the same server.
"""
from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from bench.common import UpstreamProcess, make_users, median, percentile, start_server
from tests.backends import create_postgres_database, drop_postgres_database

CONTENT = ("lorem ipsum dolor sit amet " * 8)[:200]
INSERT = ("INSERT INTO messages (conversation_id, message_id, role, content, created_time, usage_estimated) "
          "VALUES ({}, {}, {}, {}, {}, 0)")
UPDATE = "UPDATE conversations SET last_message_id = {n}, message_count = {n} WHERE id = {cid}"


def rows(cid: int, count: int) -> list[tuple[object, ...]]:
    now = int(time.time())
    return [(cid, i, "user" if i % 2 else "assistant", f"{i} {CONTENT}", now) for i in range(1, count + 1)]


def fill_sqlite(path: Path, cid: int, count: int) -> None:
    with sqlite3.connect(path) as db:
        db.executemany(INSERT.format("?", "?", "?", "?", "?"), rows(cid, count))
        db.execute(UPDATE.format(n=count, cid=cid))


async def fill_postgres(url: str, cid: int, count: int) -> None:
    db = await asyncpg.connect(url)
    try:
        await db.executemany(INSERT.format("$1", "$2", "$3", "$4", "$5"), rows(cid, count))
        await db.execute(UPDATE.format(n=count, cid=cid))
    finally:
        await db.close()


def timings(base_url: str, path: str, headers: dict[str, str], requests: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=base_url, timeout=60) as http:
        http.get(path, headers=headers).raise_for_status()  # warm
        for _ in range(requests):
            start = time.perf_counter()
            response = http.get(path, headers=headers)
            samples.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    return samples


def measure(messages: int, requests: int) -> list[dict[str, object]]:
    results = []
    upstream = UpstreamProcess()
    postgres = create_postgres_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            for database in ("sqlite", "postgresql"):
                sections = {"database": {"url": postgres}} if database == "postgresql" else {}
                server = start_server(workdir, upstream, **sections)
                try:
                    [(headers, cid)] = make_users(server.url, 1)
                    if database == "sqlite":
                        fill_sqlite(Path(workdir / next(p.name for p in workdir.glob("bench-*.db"))), cid, messages)
                    else:
                        asyncio.run(fill_postgres(postgres, cid, messages))
                    history = timings(server.url, f"/api/conversations/history/{cid}", headers, requests)
                    me = timings(server.url, "/api/users/me", headers, requests)
                finally:
                    server.stop()
                for p in workdir.glob("bench-*.db*"):
                    p.unlink()
                results.append({"database": database, "p50_ms": median(history), "p99_ms": percentile(history, 0.99),
                                "baseline_ms": median(me)})
    finally:
        upstream.stop()
        drop_postgres_database(postgres)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    print(f"History of a {args.messages}-message conversation, {args.requests} sequential requests")
    for row in measure(args.messages, args.requests):
        print(f"  {row['database']:<10} p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms"
              f"  (GET /api/users/me p50 {row['baseline_ms']:.2f} ms; target p50 <= 50 ms)")


if __name__ == "__main__":
    main()
