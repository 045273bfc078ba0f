"""Imports (issue 23): a ChatGPT export near the 50 MiB bound through POST
/api/import/chatgpt, and the Go original's data through `realtime-llm import-original`.

    .venv/bin/python -m bench.imports [--conversations 2000] [--users 500] [--rounds 3]

ChatGPT, for SQLite and PostgreSQL: one server process; an export of N conversations of 20
messages (about 1 KiB each, a regenerated answer in each) is uploaded `rounds` times, each
by a new user. Reported: median time, conversations a second, and the server's peak RSS
growth during the import (VmHWM after /proc/PID/clear_refs), against the baseline of the
same run: the peak RSS of a bare `json.load` of the same file in a process of its own,
which is what reading the export whole would cost before a single row is written.

import-original, into SQLite and PostgreSQL: U users with 5 conversations of 10 messages
each, in the original's SQLite file and a redis-server of its own; median wall time of
the command over the rounds (each into a fresh database).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import UpstreamProcess, make_users, median, start_server
from bench.upload import status_kib
from tests.backends import PrivateRedis, create_postgres_database, drop_postgres_database
from tests.servers import write_config

TEXT = ("The quick brown fox jumps over the lazy dog. " * 23)[:1000]


def export(conversations: int) -> bytes:
    items = []
    for c in range(conversations):
        mapping: dict[str, Any] = {"root": {"id": "root", "message": None, "parent": None, "children": ["m0"]}}
        for i in range(20):
            key, parent = f"m{i}", ("root" if i == 0 else f"m{i - 1}")
            children = [f"m{i + 1}"] if i < 19 else []
            if i == 1:
                children.append("alt")
            mapping[key] = {"id": key, "parent": parent, "children": children, "message": {
                "author": {"role": "user" if i % 2 == 0 else "assistant"}, "create_time": 1.7e9 + i,
                "content": {"content_type": "text", "parts": [f"{c}/{i} {TEXT}"]}}}
        mapping["alt"] = {"id": "alt", "parent": "m1", "children": [], "message": {
            "author": {"role": "user"}, "create_time": 1.7e9 + 99, "content": {"content_type": "text", "parts": [TEXT]}}}
        items.append({"title": f"Conversation {c}", "create_time": 1.7e9, "mapping": mapping, "current_node": "m19"})
    return json.dumps(items).encode()


def json_load_peak_mib(path: Path) -> float:
    """Peak RSS of a process that only loads the file with json, minus one that does not."""
    def peak(code: str) -> float:  # VmHWM: ru_maxrss would carry this process's own peak across exec
        out = subprocess.run([sys.executable, "-c", f"import json; {code}; print([line.split()[1] for line in "
                              "open('/proc/self/status') if line.startswith('VmHWM:')][0])"],
                             capture_output=True, text=True, check=True).stdout
        return int(out) / 1024
    return peak(f"json.load(open({str(path)!r}, 'rb'))") - peak("pass")


def chatgpt(conversations: int, rounds: int) -> None:
    upstream = UpstreamProcess()
    postgres = create_postgres_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            body = export(conversations)
            path = Path(tmp) / "conversations.json"
            path.write_bytes(body)
            baseline = json_load_peak_mib(path)
            print(f"ChatGPT export: {conversations} conversations, {len(body) / 2**20:.1f} MiB; "
                  f"json.load of it alone peaks at +{baseline:.0f} MiB")
            for database in ("sqlite", "postgresql"):
                sections: dict[str, Any] = {"limits": {"max_import_bytes": 60 * 2**20}}
                if database == "postgresql":
                    sections["database"] = {"url": postgres}
                server = start_server(Path(tmp), upstream, **sections)
                try:
                    assert server.process is not None
                    pid = server.process.pid
                    times, growth = [], []
                    for headers, _ in make_users(server.url, rounds):
                        with httpx.Client(base_url=server.url, timeout=600) as http:
                            Path(f"/proc/{pid}/clear_refs").write_text("5")
                            before = status_kib(pid, "VmRSS")
                            start = time.perf_counter()
                            response = http.post("/api/import/chatgpt", headers=headers,
                                                 files={"file": ("conversations.json", body)})
                            times.append(time.perf_counter() - start)
                            response.raise_for_status()
                            assert response.json()["imported"] == conversations
                            growth.append((status_kib(pid, "VmHWM") - before) / 1024)
                finally:
                    server.stop()
                seconds = median(times)
                print(f"  {database:<10} {seconds:6.1f} s = {conversations / seconds:5.0f} conversations/s; "
                      f"peak RSS +{max(growth):.0f} MiB (worst round) = {max(growth) / baseline:.2f}x json.load's")
    finally:
        upstream.stop()
        drop_postgres_database(postgres)


def write_original(path: Path, blobs: redis.Redis, users: int) -> None:
    import sqlite3

    import bcrypt

    password = bcrypt.hashpw(b"original password", bcrypt.gensalt(10)).decode().replace("$2b$", "$2a$")
    database = sqlite3.connect(path)
    database.execute("CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT UNIQUE NOT NULL, "
                     "password TEXT NOT NULL)")
    database.execute("CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, user_id INTEGER NOT NULL, "
                     "create_time INTEGER NOT NULL)")
    pipe = blobs.pipeline(transaction=False)
    for u in range(1, users + 1):
        database.execute("INSERT INTO users VALUES (?, ?, ?)", (u, f"user{u}", password))
        for c in range(5):
            cid = u * 10 + c
            database.execute("INSERT INTO conversations VALUES (?, ?, ?, ?)", (str(cid), f"c{cid}", u, 1732400000))
            messages = [{"role": "system", "content": "system", "message_id": 0}] + [
                {"role": ("user", "assistant")[i % 2], "content": TEXT, "message_id": i + 1} for i in range(10)]
            pipe.set(f"conversation:{cid}", json.dumps({"conversation_id": cid, "title": f"c{cid}", "model": "demo",
                                                         "api_key": "sk-x", "messages": messages,
                                                         "created_time": 1732400000}))
    pipe.execute()
    database.commit()
    database.close()


def original(users: int, rounds: int) -> None:
    private = PrivateRedis()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "original.db"
            blobs = redis.Redis.from_url(private.url)
            write_original(source, blobs, users)
            blobs.close()
            print(f"import-original: {users} users, {users * 5} conversations, {users * 50} messages")
            for database in ("sqlite", "postgresql"):
                times = []
                for r in range(rounds):
                    target = create_postgres_database() if database == "postgresql" else ""
                    config: dict[str, Any] = {"sqlite": {"path": str(Path(tmp) / f"target-{r}.db")}}
                    if target:
                        config["database"] = {"url": target}
                    path = write_config(Path(tmp) / f"config-{database}-{r}.yaml", config)
                    try:
                        start = time.perf_counter()
                        subprocess.run([sys.executable, "-m", "realtime_llm", "import-original", "--from-sqlite",
                                        str(source), "--from-redis", private.url, "--config", str(path)],
                                       check=True, capture_output=True, timeout=600)
                        times.append(time.perf_counter() - start)
                    finally:
                        if target:
                            drop_postgres_database(target)
                seconds = median(times)
                print(f"  {database:<10} {seconds:6.1f} s = {users * 5 / seconds:5.0f} conversations/s")
    finally:
        private.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    chatgpt(args.conversations, args.rounds)
    original(args.users, args.rounds)


if __name__ == "__main__":
    main()
