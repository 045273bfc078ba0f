"""Resident memory per idle authenticated WebSocket (issue 7, figure 7; target <= 64 KiB).

    .venv/bin/python -m bench.idle_sockets [--sockets 2000] [--repeat 3]

One server process (in-process broker, SQLite). Each run: 100 sockets opened and closed
to warm the allocator, the server's VmRSS read, N sockets opened, each authenticated and
subscribed to a conversation of its own (the `ready` frame received), held idle for two
seconds, VmRSS read again. Per socket = the difference / N. The baseline in the same run is
the same server's RSS before the sockets; the load generator is this process.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from bench.common import UpstreamProcess, median, start_server


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def conversations(base_url: str, count: int) -> tuple[dict[str, str], list[int]]:
    """One user (the per-user socket limit is off in bench servers) with `count` conversations."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        credentials = {"username": f"idle_{uuid.uuid4().hex[:10]}", "password": "benchmark password"}
        http.post("/api/users/register", json=credentials).raise_for_status()
        headers = {"Authorization": "Bearer " + http.post("/api/users/login", json=credentials).json()["token"]}
        ids = [http.post("/api/conversations/create", json={}, headers=headers).json()["conversation_id"]
               for _ in range(count)]
    return headers, ids


async def hold(url: str, headers: dict[str, str], ids: list[int], pid: int) -> tuple[int, int]:
    """RSS before and while len(ids) sockets are open and idle."""
    async def opened(cid: int):  # noqa: ANN202
        ws = await connect(f"{url}/ws/conversations/{cid}", additional_headers=headers, compression=None)
        await ws.recv()  # ready: authenticated and subscribed
        return ws

    for ws in await asyncio.gather(*(opened(cid) for cid in ids[:100])):  # warm-up
        await ws.close()
    await asyncio.sleep(1)
    before = rss_kib(pid)
    sockets = []
    for start in range(0, len(ids), 200):  # in waves, as clients arrive
        sockets += await asyncio.gather(*(opened(cid) for cid in ids[start:start + 200]))
    await asyncio.sleep(2)
    during = rss_kib(pid)
    await asyncio.gather(*(ws.close() for ws in sockets))
    return before, during


def measure(sockets: int, repeat: int) -> dict[str, float]:
    upstream = UpstreamProcess()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            per_socket, baselines = [], []
            for _ in range(repeat):  # a fresh server each time: no memory kept from the last run
                server = start_server(Path(tmp), upstream)
                try:
                    assert server.process is not None
                    headers, ids = conversations(server.url, sockets)
                    before, during = asyncio.run(hold(server.url.replace("http", "ws"), headers, ids,
                                                      server.process.pid))
                finally:
                    server.stop()
                per_socket.append((during - before) / sockets)
                baselines.append(before)
    finally:
        upstream.stop()
    return {"sockets": sockets, "baseline_rss_kib": median(baselines), "kib_per_socket": median(per_socket)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.sockets, args.repeat)
    print(f"Idle authenticated WebSockets: {args.sockets} sockets, medians of {args.repeat} runs")
    print(f"  server RSS before the sockets: {result['baseline_rss_kib'] / 1024:.1f} MiB")
    print(f"  resident memory per idle socket: {result['kib_per_socket']:.1f} KiB (target <= 64 KiB)")


if __name__ == "__main__":
    main()
