"""History of a 10,000-message conversation with 100 branches (issues 7 and 17; target:
median <= 50 ms).

    .venv/bin/python -m bench.history [--messages 10000] [--branches 100] [--requests 30]

For SQLite and PostgreSQL: one server process (in-process broker), a conversation filled
with N messages of 200 characters written straight into its tables as B branches of N/B
messages, each one starting halfway down the one before (so the active branch, the last,
is about half the conversation), then `GET /api/conversations/history/{id}` N times in
sequence. The baseline in the same run is `GET /api/users/me` (authenticated, one row) on
the same server.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from bench.common import UpstreamProcess, make_users, median, percentile, start_server, wait_for_search_index
from tests.backends import create_postgres_database, drop_postgres_database

CONTENT = ("lorem ipsum dolor sit amet " * 8)[:200]
INSERT = ("INSERT INTO messages (conversation_id, message_id, role, content, created_time, parent_id, "
          "usage_estimated) VALUES ({}, {}, {}, {}, {}, {}, 0)")
UPDATE = "UPDATE conversations SET last_message_id = {n}, message_count = {n}, active_leaf_id = {n} WHERE id = {cid}"


def rows(cid: int, count: int, branches: int) -> list[tuple[object, ...]]:
    """Branch k (of `count // branches` messages) starts under the middle of branch k - 1."""
    now = int(time.time())
    size = count // branches
    parents = [0] * (count + 1)
    for i in range(2, count + 1):
        start = (i - 1) % size == 0  # the first message of a branch after the first
        parents[i] = i - 1 - size // 2 if start else i - 1
    return [(cid, i, "user" if i % 2 else "assistant", f"{i} {CONTENT}", now, parents[i])
            for i in range(1, count + 1)]


def fill_sqlite(path: Path, cid: int, count: int, branches: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(INSERT.format(*"??????"), rows(cid, count, branches))
        db.execute(UPDATE.format(n=count, cid=cid))
    wait_for_search_index(path)


async def fill_postgres(url: str, cid: int, count: int, branches: int) -> None:
    db = await asyncpg.connect(url)
    try:
        await db.executemany(INSERT.format("$1", "$2", "$3", "$4", "$5", "$6"), rows(cid, count, branches))
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


def measure(messages: int, branches: int, requests: int) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
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
                        fill_sqlite(Path(workdir / next(p.name for p in workdir.glob("bench-*.db"))), cid, messages,
                                    branches)
                    else:
                        asyncio.run(fill_postgres(postgres, cid, messages, branches))
                    with httpx.Client(base_url=server.url, timeout=60) as http:
                        shown = http.get(f"/api/conversations/history/{cid}", headers=headers).json()["messages"]
                    history = timings(server.url, f"/api/conversations/history/{cid}", headers, requests)
                    me = timings(server.url, "/api/users/me", headers, requests)
                finally:
                    server.stop()
                for p in workdir.glob("bench-*.db*"):
                    p.unlink()
                results.append({"database": database, "p50_ms": median(history), "p99_ms": percentile(history, 0.99),
                                "baseline_ms": median(me), "shown": len(shown)})
    finally:
        upstream.stop()
        drop_postgres_database(postgres)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--branches", type=int, default=100)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    print(f"History of a {args.messages}-message conversation with {args.branches} branches, "
          f"{args.requests} sequential requests")
    for row in measure(args.messages, args.branches, args.requests):
        print(f"  {row['database']:<10} p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms"
              f"  active branch {row['shown']} messages"
              f"  (GET /api/users/me p50 {row['baseline_ms']:.2f} ms; target p50 <= 50 ms)")


if __name__ == "__main__":
    main()
