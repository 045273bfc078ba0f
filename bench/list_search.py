"""List and search latency for a user with 10,000 conversations and 100,000 messages, on
SQLite and on PostgreSQL, through the real server.

    .venv/bin/python -m bench.list_search [--conversations 10000] [--messages-each 10] [--requests 100]

The rows are written straight into the database (as the server would have written them;
on SQLite the server's rounds index them behind, and the run waits for that; PostgreSQL
maintains its index itself); then N sequential requests of each kind go through HTTP.
Medians and p99 in ms, with the bare /healthz round trip of the same server as the baseline.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from databases import Database

from bench.api_latency import summary, timed
from bench.common import wait_for_search_index
from realtime_llm.store.schema import conversations, messages
from tests.backends import create_postgres_database, drop_postgres_database
from tests.servers import ServerProcess, write_config

WORDS = ("weather", "budget", "python", "garden", "recipe", "travel", "invoice", "meeting", "poem", "lisbon",
         "battery", "physics", "sourdough", "planet", "contract", "holiday", "guitar", "marathon", "violin", "ocean")
RARE = "zanzibar"  # in 5 messages only


async def fill(url: str, user_id: int, count: int, each: int) -> None:
    rng = random.Random(7)
    database = Database(url)
    await database.connect()
    try:
        now = int(time.time())
        first = None
        for start in range(0, count, 500):
            async with database.transaction():
                rows = [{"user_id": user_id, "title": f"{rng.choice(WORDS).title()} notes {start + i}", "model": "demo",
                         "created_time": now, "last_message_id": each} for i in range(min(500, count - start))]
                await database.execute_many(conversations.insert(), rows)
            if first is None:
                first = await database.fetch_val("SELECT min(id) FROM conversations WHERE user_id = :u",
                                                 {"u": user_id})
        ids = [r[0] for r in await database.fetch_all(
            "SELECT id FROM conversations WHERE user_id = :u ORDER BY id", {"u": user_id})]
        rare = set(rng.sample(range(len(ids) * each), 5))
        batch = []
        n = 0
        for cid in ids:
            for m in range(1, each + 1):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
                if n in rare:
                    text += f" {RARE}"
                batch.append({"conversation_id": cid, "message_id": m, "role": "user" if m % 2 else "assistant",
                              "content": text, "created_time": now})
                n += 1
                if len(batch) == 2000:
                    async with database.transaction():
                        await database.execute_many(messages.insert(), batch)
                    batch = []
        if batch:
            async with database.transaction():
                await database.execute_many(messages.insert(), batch)
    finally:
        await database.disconnect()


def run(name: str, config: dict, url: str, workdir: Path, args: argparse.Namespace) -> list[str]:
    path = write_config(workdir / f"config-{name}.yaml", config)
    server = ServerProcess(path, workdir).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            credentials = {"username": f"bench_{name}", "password": "benchmark password"}
            http.post("/api/users/register", json=credentials).raise_for_status()
            token = http.post("/api/users/login", json=credentials).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            user_id = http.get("/api/users/me", headers=headers).json()["user_id"]
            began = time.perf_counter()
            asyncio.run(fill(url, user_id, args.conversations, args.messages_each))
            if url.startswith("sqlite:///"):
                wait_for_search_index(Path(url[len("sqlite:///"):]))
            filled = time.perf_counter() - began
            everything = http.get("/api/conversations/list", headers=headers).json()
            middle = everything[len(everything) // 2]["conversation_id"]
            cases = [
                ("list, first page (limit=20)", {"limit": 20}),
                ("list, a middle page (before=...)", {"limit": 20, "before": middle}),
                (f"list, all {args.conversations}", {}),
                (f"search, rare word ({RARE})", {"q": RARE}),
                ("search, common word, limit=20", {"q": "sourdough", "limit": 20}),
                ("search, no match", {"q": "qwertyuiop"}),
                ("search, 2 characters (scan)", {"q": "zq"}),
            ]
            health = [timed(lambda: http.get("/healthz")) for _ in range(args.requests)]
            baseline = statistics.median(health)
            rows = [f"{name}: {args.conversations} conversations, {args.conversations * args.messages_each} "
                    f"messages (written and indexed in {filled:.0f} s)",
                    summary("GET /healthz (baseline)", health, baseline)]
            for label, params in cases:
                samples = [timed(lambda p=params: http.get("/api/conversations/list", params=p, headers=headers))
                           for _ in range(args.requests)]
                rows.append(summary(label, samples, baseline))
            found = http.get("/api/conversations/list", params={"q": RARE}, headers=headers).json()
            rows.append(f"  ({RARE}: {len(found)} conversations found; 5 messages contain it)")
            return rows
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages-each", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    output = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sqlite_path = workdir / "bench.db"
        output += run("SQLite", {"sqlite": {"path": str(sqlite_path)}}, f"sqlite:///{sqlite_path}", workdir, args)
        pg = create_postgres_database()
        try:
            output += run("PostgreSQL", {"database": {"url": pg}}, pg, workdir, args)
        finally:
            drop_postgres_database(pg)
    print(f"{args.requests} sequential requests each; medians and p99 in ms")
    print(f"{'request':<34} {'p50 ms':>9} {'p99 ms':>9} {'vs healthz':>10}")
    for line in output:
        print(line)


if __name__ == "__main__":
    main()
