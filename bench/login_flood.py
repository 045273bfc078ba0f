"""A login flood during streaming (issue 7, figure 6; target: added delay p99 <= 5 ms).

    .venv/bin/python -m bench.login_flood [--streams 100] [--logins 50] [--repeat 3]

One server process with the default bcrypt cost (12 rounds). 100 WebSocket streams from
the fake upstream (20 tokens/s, stamped with their emission time) run alone, then again
while 50 logins arrive at once. Delay = receipt minus emission, per token; the figure is
the p99 with the flood minus the p99 without it, medians of the repeats. The server's
event loop must never wait on bcrypt.

The logins come from a process of their own, started and ready before the streams begin,
as a flood would come from other machines (though here it shares the two cores). Sent
from the process that times the streams (as until 2026-12-06), they stalled that process's
own event loop and its receipt times with it. In one run of 5 rounds, each a flood from
here and one from a process of its own (a throwaway script, which started that process
when the flood began): added p99 10.4 ms against 1.6 ms (medians); the timing loop's
longest stall 46 against 25 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import UpstreamProcess, make_users, median, percentile, start_server
from bench.ws_streams import run_load

PASSWORD = "benchmark password"


async def flood(http: httpx.AsyncClient, names: list[str]) -> list[float]:
    async def login(name: str) -> float:
        start = time.perf_counter()
        response = await http.post("/api/users/login", json={"username": name, "password": PASSWORD})
        response.raise_for_status()
        return time.perf_counter() - start
    return list(await asyncio.gather(*(login(n) for n in names)))


async def flood_on_request(url: str, names: list[str]) -> None:
    """The flooding process: a fresh client made ready, then a flood for each `go` line on
    stdin (read blocking: nothing else runs here meanwhile), each login's seconds printed
    back on one line."""
    while True:
        async with httpx.AsyncClient(base_url=url, timeout=120,
                                     limits=httpx.Limits(max_connections=len(names))) as http:
            print("ready", flush=True)
            if sys.stdin.readline().strip() != "go":
                return
            print(" ".join(f"{s:.6f}" for s in await flood(http, names)), flush=True)


class FloodProcess:
    """The logins' own process (see the module's docstring for why), driven over its stdin
    and stdout: `run` is one flood."""

    def __init__(self, url: str, names: list[str]) -> None:
        self.names = names
        self.process = subprocess.Popen([sys.executable, "-m", "bench.login_flood", "--flood-from", url, *names],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self._expect_ready()
        except BaseException:
            self.stop()
            raise

    def _expect_ready(self) -> None:
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the flooding process ended (its stderr says why)")

    def run(self) -> list[float]:
        """One flood (blocking): each login's seconds."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        seconds = [float(s) for s in self.process.stdout.readline().split()]
        if len(seconds) != len(self.names):
            raise RuntimeError("the flooding process ended (its stderr says why)")
        self._expect_ready()
        return seconds

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def streams_with_flood(server, users, tokens: int, flooder: FloodProcess):  # noqa: ANN001, ANN201
    load = asyncio.create_task(run_load([server], users, tokens))
    await asyncio.sleep(0.5)  # the streams are under way
    logins = await asyncio.to_thread(flooder.run)
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
                flooder = FloodProcess(server.url, names)
                try:
                    for _ in range(repeat):
                        _, delays, _ = asyncio.run(run_load([server], users, tokens))
                        quiet.append(percentile(delays, 0.99) * 1000)
                        (_, delays, _), seconds = asyncio.run(streams_with_flood(server, users, tokens, flooder))
                        loud.append(percentile(delays, 0.99) * 1000)
                        login_p50.append(median(seconds) * 1000)
                finally:
                    flooder.stop()
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
    parser.add_argument("--flood-from", nargs="+", metavar=("URL", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_from:
        asyncio.run(flood_on_request(args.flood_from[0], args.flood_from[1:]))
        return
    r = measure(args.streams, args.logins, args.repeat)
    print(f"{args.logins} logins (bcrypt, 12 rounds) during {args.streams} streams; medians of {args.repeat} runs")
    print(f"  delay p99 alone {r['p99_alone_ms']:.1f} ms, with the flood {r['p99_flood_ms']:.1f} ms: "
          f"added {r['added_p99_ms']:.1f} ms (target <= 5 ms); login p50 {r['login_p50_ms']:.0f} ms")


if __name__ == "__main__":
    main()
