"""WebSocket streaming: N concurrent clients each receiving an answer from the fake upstream
(20 tokens/s), through 1 process (in-process broker), 2 processes sharing Redis (clients
split between their ports), and the same 2 processes behind Caddy (the repo's Caddyfile,
one public port), in one run.
Also the Redis cost of one 1,000-token answer, from Redis's own INFO counters.

    .venv/bin/python -m bench.ws_streams [--clients 50 200] [--tokens 60] [--repeat 3]

Delay = client receipt time minus the upstream's emission time stamped into each token.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.common import UpstreamProcess, make_users, median, percentile, start_server
from tests.backends import PrivateRedis
from tests.servers import Caddy, ServerProcess

STAMP = re.compile(r"<(\d+\.\d+)>")


async def one_client(url: str, headers: dict[str, str], cid: int, tokens: int, delays: list[float],
                     failures: list[str]) -> int:
    """Events received; a client whose connection fails is counted in `failures`, not fatal."""
    try:
        return await _one_client(url, headers, cid, tokens, delays)
    except (OSError, ConnectionClosed, TimeoutError) as exc:
        failures.append(f"{type(exc).__name__}: {exc}"[:120])
        return 0


async def _one_client(url: str, headers: dict[str, str], cid: int, tokens: int, delays: list[float]) -> int:
    ws_url = url.replace("http://", "ws://") + f"/ws/conversations/{cid}"
    events = 0
    async with connect(ws_url, additional_headers=headers, compression=None, max_size=None) as ws:
        assert orjson.loads(await ws.recv())["event"] == "ready"
        await ws.send(orjson.dumps({"type": "message", "content": f"#fake tokens={tokens} delay_ms=50 stamp=1"}).decode())
        while True:
            frame = orjson.loads(await ws.recv())
            now = time.time()
            if frame["event"] == "message":
                events += 1
                delays.extend(now - float(t) for t in STAMP.findall(frame["data"]))
            elif frame["event"] in ("full_response", "error"):
                return events


async def run_load(servers: list[ServerProcess] | list[Caddy], users: list[tuple[dict[str, str], int]],
                   tokens: int) -> tuple[float, list[float], int]:
    delays: list[float] = []
    failures: list[str] = []
    start = time.perf_counter()
    counts = await asyncio.gather(*(
        one_client(servers[i % len(servers)].url, headers, cid, tokens, delays, failures)
        for i, (headers, cid) in enumerate(users)
    ))
    elapsed = time.perf_counter() - start
    for failure in sorted(set(failures)):
        print(f"  failed client ({failures.count(failure)}x): {failure}", file=sys.stderr)
    return sum(counts) / elapsed, delays, len(failures)


def redis_cost(workdir: Path, upstream: UpstreamProcess, private: PrivateRedis,
               directive: str = "#fake tokens=1000") -> tuple[int, int, int, int]:
    """Commands and bytes written to Redis for one answer, its size in bytes (thinking
    included), and its message events."""
    server = start_server(workdir, upstream, redis={"url": private.url, "key_prefix": f"bench-{uuid.uuid4().hex[:6]}"})
    try:
        users = make_users(server.url, 1)
        client = redis.Redis.from_url(private.url)
        headers, cid = users[0]
        import httpx
        # A first answer loads the scripts and opens the connections: once per process, not
        # per answer, so it is left out of the per-answer cost.
        httpx.post(f"{server.url}/api/chat/{cid}", json={"message": "#fake tokens=5"}, headers=headers, timeout=60)
        client.config_resetstat()
        before = client.info("stats")["total_net_input_bytes"]
        response = httpx.post(f"{server.url}/api/chat/{cid}", json={"message": directive}, headers=headers, timeout=60)
        done, full = [orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")][-2:]
        answer = full["data"] + done.get("reasoning", "")
        stats = client.info("commandstats")
        written = client.info("stats")["total_net_input_bytes"] - before
        calls = sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))
        events = len([line for line in response.text.splitlines() if line.startswith("event: message")])
        return calls, written, len(answer.encode()), events
    finally:
        server.stop()


def run(client_counts: list[int], tokens: int, repeat: int, with_caddy: bool = True):  # noqa: ANN201
    """Rows (clients, setup, events/s, delay p50 ms, delay p99 ms, failed) and the Redis
    cost (commands, bytes written, answer bytes, message events)."""
    upstream = UpstreamProcess()
    private = PrivateRedis()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            single = [start_server(workdir, upstream)]
            config = {"redis": {"url": private.url, "key_prefix": f"bench-{uuid.uuid4().hex[:6]}"}}
            first = start_server(workdir, upstream, **config)
            pair = [first, ServerProcess(first.config_path, workdir).start()]
            caddy = Caddy(workdir, [f"127.0.0.1:{server.port}" for server in pair]) if with_caddy else None
            setups: list[tuple[str, list[Any]]] = [("1 process, in-process broker", single), ("2 processes + Redis", pair)]
            if caddy is not None:
                setups.append(("2 processes + Redis, Caddy", [caddy]))
            try:
                for clients in client_counts:
                    for name, servers in setups:
                        users = make_users(servers[0].url, clients)
                        rates, p50s, p99s, failed = [], [], [], 0
                        for _ in range(repeat):
                            rate, delays, failures = asyncio.run(run_load(servers, users, tokens))
                            rates.append(rate)
                            p50s.append(percentile(delays, 0.5) * 1000)
                            p99s.append(percentile(delays, 0.99) * 1000)
                            failed += failures
                        rows.append((clients, name, median(rates), median(p50s), median(p99s), failed))
            finally:
                if caddy is not None:
                    caddy.stop()
                for server in (*single, *pair):
                    server.stop()
            cost = redis_cost(workdir, upstream, private)
    finally:
        upstream.stop()
        private.stop()
    return rows, cost


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows, cost = run(args.clients, args.tokens, args.repeat)
    print(f"WebSocket streams, fake upstream at 20 tokens/s, {args.tokens} tokens each; medians of {args.repeat} runs")
    print(f"{'clients':>7}  {'setup':<32} {'events/s':>9} {'delay p50 ms':>13} {'delay p99 ms':>13} {'failed':>7}")
    for clients, name, rate, p50, p99, failed in rows:
        print(f"{clients:>7}  {name:<32} {rate:>9.0f} {p50:>13.2f} {p99:>13.2f} {failed:>7}")
    print("(failed: client connections that broke, summed over the runs)")
    calls, written, size, events = cost
    print(f"\nRedis cost of one 1,000-token answer ({size} bytes, {events} message events, batch_ms 25):")
    print(f"  commands: {calls}   bytes written to Redis: {written} ({written / size:.2f} x the answer)")


if __name__ == "__main__":
    main()
