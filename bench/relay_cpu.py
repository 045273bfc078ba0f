"""Server CPU per 1,000 relayed tokens (issue 21, target 2): 50 closed-loop SSE clients
(each sends its next message as soon as an answer ends) through realtime-llm with the
in-process broker, with Redis, and through the bare relay (bench.bare_relay: no auth,
storage, batching or broker; one SSE event a token), alternating in each round, for
50-token and 1,000-token answers. The server's CPU is its own (utime + stime from
/proc) over the measured window; tokens are those the clients received in it.

    .venv/bin/python -m bench.relay_cpu [--streams 50] [--tokens 50 1000] [--seconds 6] [--rounds 2] [--delay-ms 5]

The fake upstream sends a token every --delay-ms per stream. Medians over the rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.capacity import BareRelay
from bench.common import UpstreamProcess, make_users, median, start_server
from tests.backends import PrivateRedis

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)


async def client(session: aiohttp.ClientSession, url: str, headers: dict[str, str], cid: int, message: str,
                 window: list[float], counted: list[int], failures: list[str]) -> None:
    """Ask, read the answer, ask again, until the window ends; tokens received within it
    are added to counted[0]."""
    while time.monotonic() < window[1]:
        try:
            async with session.post(f"{url}/api/chat/{cid}", json={"message": message}, headers=headers) as response:
                if response.status != 200:
                    failures.append(f"HTTP {response.status}")
                    await asyncio.sleep(0.1)
                    continue
                event = b""
                async for line in response.content:
                    if line.startswith(b"event: "):
                        event = line[7:].strip()
                    elif line.startswith(b"data: ") and event == b"message":
                        now = time.monotonic()
                        if window[0] <= now < window[1]:
                            counted[0] += orjson.loads(line[6:])["data"].count(" ")  # "t0 t1 ": a token each
        except aiohttp.ClientError as exc:
            failures.append(type(exc).__name__)


async def load(url: str, users: list[tuple[dict[str, str], int]], message: str, pid: int,
               seconds: float) -> tuple[float, float, int]:
    """(tokens/s, server CPU ms per 1,000 tokens, failed requests) over a window of
    `seconds` after one second of warm-up."""
    start = time.monotonic() + 1.0
    window = [start, start + seconds]
    counted: list[int] = [0]
    failures: list[str] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def measure_cpu() -> tuple[float, float]:
            await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
            before = cpu_seconds(pid)
            await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
            return before, cpu_seconds(pid)

        cpu = asyncio.create_task(measure_cpu())
        await asyncio.gather(*(client(session, url, headers, cid, message, window, counted, failures)
                               for headers, cid in users))
        before, after = await cpu
    tokens = counted[0]
    return tokens / seconds, (after - before) * 1000 / max(tokens, 1) * 1000, len(failures)


def run(streams: int, token_counts: list[int], seconds: float, rounds: int,
        delay_ms: int) -> list[tuple[int, str, float, float, int]]:
    """Rows (answer tokens, setup, tokens/s, CPU ms per 1,000 tokens, failed), medians."""
    upstream = UpstreamProcess()
    private = PrivateRedis()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            bare = BareRelay(upstream)
            memory = start_server(workdir, upstream)
            with_redis = start_server(workdir, upstream, redis={"url": private.url,
                                                                "key_prefix": f"bench-{uuid.uuid4().hex[:6]}"})
            setups: list[tuple[str, Any, list[tuple[dict[str, str], int]]]] = [
                ("bare relay", bare, [({}, i + 1) for i in range(streams)]),
                ("realtime-llm, in-process broker", memory, make_users(memory.url, streams)),
                ("realtime-llm, Redis", with_redis, make_users(with_redis.url, streams)),
            ]
            rows = []
            try:
                for tokens in token_counts:
                    message = f"#fake tokens={tokens} delay_ms={delay_ms}\nhello"
                    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _, _ in setups}
                    for _ in range(rounds):
                        for name, server, users in setups:
                            samples[name].append(asyncio.run(load(server.url, users, message, server.process.pid,
                                                                  seconds)))
                    for name, _, _ in setups:
                        got = samples[name]
                        rows.append((tokens, name, median([s[0] for s in got]), median([s[1] for s in got]),
                                     sum(s[2] for s in got)))
            finally:
                for server in (bare, memory, with_redis):
                    server.stop()
    finally:
        upstream.stop()
        private.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--tokens", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--delay-ms", type=int, default=5)
    args = parser.parse_args()
    rows = run(args.streams, args.tokens, args.seconds, args.rounds, args.delay_ms)
    print(f"{args.streams} closed-loop SSE streams, a token every {args.delay_ms} ms from the upstream; "
          f"medians of {args.rounds} rounds of {args.seconds:.0f} s")
    print(f"{'tokens':>6}  {'setup':<32} {'tokens/s':>9} {'CPU ms/1k tokens':>17} {'x bare':>7} {'failed':>7}")
    bare = {tokens: cpu for tokens, name, _, cpu, _ in rows if name == "bare relay"}
    for tokens, name, rate, cpu, failed in rows:
        print(f"{tokens:>6}  {name:<32} {rate:>9.0f} {cpu:>17.1f} {cpu / bare[tokens]:>7.2f} {failed:>7}")


if __name__ == "__main__":
    main()
