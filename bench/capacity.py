"""Streaming capacity of one worker (issue 7, figure 2): the most concurrent WebSocket
streams (fake upstream at 20 tokens/s each) it carries while the delay from upstream
emission to client receipt stays at p99 <= 50 ms. Baseline in the same run, with the same
load generator: bench.bare_relay. Target: >= 1.0x the baseline with the in-process
broker, >= 0.5x with Redis.

    .venv/bin/python -m bench.capacity [--levels 100 200 300 400 600] [--repeat 1]

Each setup is tried at each level in turn (a level counts if the median p99 of the
repeats is within 50 ms and no connection failed); its capacity is the last level that
counted before one did not.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

import httpx

from bench.common import UpstreamProcess, make_users, median, percentile, start_module, start_server, stop_processes
from bench.ws_streams import run_load
from tests.backends import PrivateRedis
from tests.servers import free_port


class BareRelay:
    def __init__(self, upstream: UpstreamProcess) -> None:
        self.port = free_port()
        self.process = start_module(["bench.bare_relay", str(self.port), upstream.base_url],
                                    lambda: httpx.get(self.url, timeout=1), "the bare relay")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_processes([self.process])


def capacity(server, users, levels: list[int], repeat: int) -> tuple[int, dict[int, float]]:  # noqa: ANN001
    best, p99s = 0, {}
    for level in levels:
        runs = [asyncio.run(run_load([server], users[:level], 60)) for _ in range(repeat)]
        p99s[level] = median([percentile(delays, 0.99) * 1000 for _, delays, _ in runs])
        if p99s[level] > 50 or any(failed for _, _, failed in runs):
            break
        best = level
    return best, p99s


def measure(levels: list[int], repeat: int) -> dict[str, tuple[int, dict[int, float]]]:
    upstream = UpstreamProcess()
    private = PrivateRedis()
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            bare = BareRelay(upstream)
            try:
                results["bare relay"] = capacity(bare, [({}, 1)] * max(levels), levels, repeat)
            finally:
                bare.stop()
            for name, sections in (("in-process broker", {}),
                                   ("Redis", {"redis": {"url": private.url, "key_prefix": f"cap-{uuid.uuid4().hex[:6]}"}})):
                server = start_server(workdir, upstream, **sections)
                try:
                    results[name] = capacity(server, make_users(server.url, max(levels)), levels, repeat)
                finally:
                    server.stop()
    finally:
        upstream.stop()
        private.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", type=int, nargs="+", default=[50, 100, 150, 200, 250, 300, 400])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    results = measure(args.levels, args.repeat)
    base = results["bare relay"][0]
    print("Streaming capacity of one worker (p99 delay <= 50 ms), streams at 20 tokens/s")
    for name, (best, p99s) in results.items():
        ratio = f"{best / base:.2f}x the bare relay" if base else "-"
        tried = ", ".join(f"{level}: {p99:.0f} ms" for level, p99 in p99s.items())
        print(f"  {name:<18} {best:>5} streams  {ratio:<22} (p99 by level: {tried})")


if __name__ == "__main__":
    main()
