"""What turning asyncpg's statement cache off costs (store/postgres.py: it must be off
behind a transaction pooler): the time of one statement of the kind the hot path runs, on
PostgreSQL directly with the cache on (the baseline) and off, and through PgBouncer.

    .venv/bin/python -m bench.pg_statements [--statements 2000] [--repeat 5]

A start of an answer runs about a dozen statements, so its added cost is about twelve
times the difference printed.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from bench.common import median
from tests.backends import PgBouncer, create_postgres_database, drop_postgres_database

SETUP = "CREATE TABLE t (id BIGINT PRIMARY KEY, conversation_id BIGINT, body TEXT)"
FILL = "INSERT INTO t SELECT g, g % 100, repeat('x', 200) FROM generate_series(1, 10000) g"
QUERY = "SELECT id, body FROM t WHERE conversation_id = $1 AND id > $2 ORDER BY id LIMIT 5"


async def per_statement(url: str, cache: bool, statements: int) -> float:
    connection = await asyncpg.connect(url, statement_cache_size=100 if cache else 0)
    try:
        for i in range(50):  # warm
            await connection.fetch(QUERY, i % 100, i)
        started = time.perf_counter()
        for i in range(statements):
            await connection.fetch(QUERY, i % 100, i)
        return (time.perf_counter() - started) / statements * 1e6
    finally:
        await connection.close()


async def runs(direct: str, pooled: str, statements: int, repeat: int) -> dict[str, float]:
    setup = await asyncpg.connect(direct)
    await setup.execute(SETUP)
    await setup.execute(FILL)
    await setup.close()
    found: dict[str, list[float]] = {"direct, cache on": [], "direct, cache off": [], "PgBouncer, cache off": []}
    for _ in range(repeat):
        found["direct, cache on"].append(await per_statement(direct, True, statements))
        found["direct, cache off"].append(await per_statement(direct, False, statements))
        found["PgBouncer, cache off"].append(await per_statement(pooled, False, statements))
    return {name: median(values) for name, values in found.items()}


def measure(statements: int, repeat: int) -> dict[str, float]:
    direct = create_postgres_database()
    bouncer = PgBouncer()
    try:
        return asyncio.run(runs(direct, bouncer.url(direct), statements, repeat))
    finally:
        bouncer.stop()
        drop_postgres_database(direct)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    figures = measure(args.statements, args.repeat)
    base = figures["direct, cache on"]
    print(f"one statement (median of {args.repeat} runs of {args.statements}):")
    for name, micros in figures.items():
        print(f"  {name:22s} {micros:7.1f} µs  {micros / base:.2f}x")


if __name__ == "__main__":
    main()
