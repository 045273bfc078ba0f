"""Memory an idle conversation holds once its answers are saved (issue 21, target 4):
the server's RSS above idle, and with Redis the bytes of its keys.

    .venv/bin/python -m bench.replay_memory [--conversations 500] [--turns 20] [--clients 20]

For the in-process broker and Redis: one server process, the demo model without delay
(50-word answers, batched as usual); N conversations of T turns each, C clients at once.
Then a wait of GRACE + 3 seconds, and the server's RSS above what it was before the chats
(the warm-up done), and with Redis the MEMORY USAGE of every key of the server's (replay
buffers, counters, history caches; a few of the user's) divided by N. Baseline in the same
run: the same load with `stream.replay_grace_seconds` equal to `replay_ttl_seconds`
(3600: every answer's events kept for the hour, as before this change).
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import UpstreamProcess, make_users, start_server
from bench.upload import status_kib
from tests.backends import PrivateRedis

GRACE = 3


async def chat(url: str, headers: dict[str, str], conversations: list[int], turns: int, clients: int) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for cid in conversations:
        queue.put_nowait(cid)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
            while not queue.empty():
                cid = queue.get_nowait()
                for turn in range(turns):
                    response = await http.post(f"/api/chat/{cid}", json={"message": f"turn {turn} of {cid}"})
                    response.raise_for_status()

    await asyncio.gather(*(client() for _ in range(clients)))


def measure(broker: str, grace: int, conversations: int, turns: int, clients: int, tmp: Path,
            upstream: UpstreamProcess, redis_url: str | None) -> tuple[float, float | None, float]:
    """(RSS growth MiB, Redis bytes per conversation or None, seconds of chatting)."""
    prefix = f"bench{grace}{int(time.time())}"
    sections: dict[str, Any] = {
        "stream": {"replay_grace_seconds": grace},
        "llm": {"default_model": "demo", "providers": [
            {"name": "demo", "kind": "demo", "models": ["demo"], "delay_ms": 0},
            {"name": "fake", "kind": "openai", "base_url": upstream.base_url, "models": ["fake-*"],
             "api_key": "sk-bench"}]},
    }
    if redis_url is not None:
        sections["redis"] = {"url": redis_url, "key_prefix": prefix}
    server = start_server(tmp, upstream, **sections)
    try:
        assert server.process is not None
        [(headers, _)] = make_users(server.url, 1)
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            ids = [http.post("/api/conversations/create", json={"model": "demo"}).json()["conversation_id"]
                   for _ in range(conversations + 10)]
        asyncio.run(chat(server.url, headers, ids[:10], 2, 5))  # warm-up
        time.sleep(GRACE + 3)
        before = status_kib(server.process.pid, "VmRSS")
        start = time.perf_counter()
        asyncio.run(chat(server.url, headers, ids[10:], turns, clients))
        seconds = time.perf_counter() - start
        time.sleep(GRACE + 3)
        growth = (status_kib(server.process.pid, "VmRSS") - before) / 1024
        per_conversation = None
        if redis_url is not None:
            client = redis.Redis.from_url(redis_url)
            # Every key of this server's (the warm-up's ten conversations and the user's
            # few keys too: an overestimate by that much).
            total = sum(client.memory_usage(key) or 0 for key in client.scan_iter(f"{prefix}:*", count=1000))
            client.close()
            per_conversation = total / conversations
        return growth, per_conversation, seconds
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    upstream = UpstreamProcess()
    private = PrivateRedis()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{args.conversations} conversations x {args.turns} turns, {args.clients} clients; "
                  f"measured {GRACE + 3} s after the last answer")
            for broker, url in (("in-process", None), ("redis", private.url)):
                for label, grace in (("kept an hour (before)", 3600), (f"grace {GRACE} s", GRACE)):
                    growth, per_conversation, seconds = measure(broker, grace, args.conversations, args.turns,
                                                                args.clients, Path(tmp), upstream, url)
                    redis_part = "" if per_conversation is None else \
                        f"; Redis {per_conversation / 1024:.1f} KiB per conversation"
                    print(f"  {broker:<10} {label:<22} RSS +{growth:6.1f} MiB = "
                          f"{growth * 1024 / args.conversations:.1f} KiB per conversation{redis_part} "
                          f"({seconds:.0f} s of chats)")
    finally:
        private.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
