"""A login flood during streaming (issue 7, figure 6; target: added delay p99 <= 5 ms).

    .venv/bin/python -m bench.login_flood [--streams 100] [--logins 50] [--repeat 3]

One server process with the default bcrypt cost (12 rounds). 100 WebSocket streams from
the fake upstream (20 tokens/s, stamped with their emission time) run alone, then again
while 50 logins arrive at once. Delay = receipt minus emission, per token; the figure is
the p99 with the flood minus the p99 without it, medians of the repeats. Both loads come
from this process; the server's event loop must never wait on bcrypt.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import UpstreamProcess, make_users, median, percentile, start_server
from bench.ws_streams import run_load

PASSWORD = "benchmark password"


async def flood(url: str, names: list[str]) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=len(names))) as http:
        async def login(name: str) -> float:
            start = time.perf_counter()
            response = await http.post("/api/users/login", json={"username": name, "password": PASSWORD})
            response.raise_for_status()
            return time.perf_counter() - start
        return list(await asyncio.gather(*(login(n) for n in names)))


async def streams_with_flood(server, users, tokens: int, names: list[str]):  # noqa: ANN001, ANN201
    load = asyncio.create_task(run_load([server], users, tokens))
    await asyncio.sleep(0.5)  # the streams are under way
    logins = await flood(server.url, names)
    return await load, logins


def measure(streams: int, logins: int, repeat: int, tokens: int = 60) -> dict[str, float]:
    upstream = UpstreamProcess()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = start_server(Path(tmp), upstream, auth={"bcrypt_rounds": 12})
            try:
                users = make_users(server.url, streams)
                names = [f"flood_{uuid.uuid4().hex[:10]}" for _ in range(logins)]
                with httpx.Client(base_url=server.url, timeout=120) as http:
                    for name in names:
                        http.post("/api/users/register", json={"username": name, "password": PASSWORD}).raise_for_status()
                quiet, loud, login_p50 = [], [], []
                for _ in range(repeat):
                    _, delays, _ = asyncio.run(run_load([server], users, tokens))
                    quiet.append(percentile(delays, 0.99) * 1000)
                    (_, delays, _), seconds = asyncio.run(streams_with_flood(server, users, tokens, names))
                    loud.append(percentile(delays, 0.99) * 1000)
                    login_p50.append(median(seconds) * 1000)
            finally:
                server.stop()
    finally:
        upstream.stop()
    return {"p99_alone_ms": median(quiet), "p99_flood_ms": median(loud),
            "added_p99_ms": median([b - a for a, b in zip(quiet, loud, strict=True)]), "login_p50_ms": median(login_p50)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--logins", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    r = measure(args.streams, args.logins, args.repeat)
    print(f"{args.logins} logins (bcrypt, 12 rounds) during {args.streams} streams; medians of {args.repeat} runs")
    print(f"  delay p99 alone {r['p99_alone_ms']:.1f} ms, with the flood {r['p99_flood_ms']:.1f} ms: "
          f"added {r['added_p99_ms']:.1f} ms (target <= 5 ms); login p50 {r['login_p50_ms']:.0f} ms")


if __name__ == "__main__":
    main()
