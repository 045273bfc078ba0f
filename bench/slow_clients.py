"""What hostile or careless clients cost the server in memory (issue 14, points 2 and 8).

    .venv/bin/python -m bench.slow_clients [--repeat 3]

One server process on its defaults (in-process broker, SQLite, the default subscriber
bounds). Each run, on a fresh server: VmRSS read (the baseline of the same run); two
connections send a 50 MiB header that never ends; VmRSS read; two SSE clients open
/events on a conversation and never read while a 10 MB answer streams to a third client
that reads it all; VmRSS read. Printed: each step's growth over the baseline, medians.
"""
from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import UpstreamProcess, make_users, median, start_server
from bench.idle_sockets import rss_kib

HEADER_BYTES = 50 * 2**20
ANSWER = "#fake tokens=500 size=20000"  # 10 MB


def flood_headers(port: int) -> tuple[socket.socket, int]:
    """A connection sending one endless header; how much of it the server took."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    try:
        while sent < HEADER_BYTES:
            connection.sendall(b"a" * 65536)
            sent += 65536
    except OSError:  # refused: the server stopped reading
        pass
    return connection, sent


def lazy_watcher(port: int, headers: dict[str, str], cid: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    connection.sendall(f"GET /api/chat/{cid}/events HTTP/1.1\r\nHost: x\r\n"
                       f"Authorization: {headers['Authorization']}\r\n\r\n".encode())
    return connection


def run_once(workdir: Path, upstream: UpstreamProcess) -> tuple[float, float, float]:
    server = start_server(workdir, upstream)
    held: list[socket.socket] = []
    try:
        assert server.process is not None
        pid = server.process.pid
        ((headers, cid),) = make_users(server.url, 1)
        httpx.post(f"{server.url}/api/chat/{cid}", json={"message": "#fake tokens=3"}, headers=headers, timeout=30)
        time.sleep(1)
        before = rss_kib(pid)
        held += [flood_headers(server.port)[0] for _ in range(2)]
        time.sleep(1)
        after_headers = rss_kib(pid)
        held += [lazy_watcher(server.port, headers, cid) for _ in range(2)]
        time.sleep(0.5)
        httpx.post(f"{server.url}/api/chat/{cid}", json={"message": ANSWER}, headers=headers, timeout=120)
        time.sleep(2)
        after_watchers = rss_kib(pid)
    finally:
        for connection in held:
            connection.close()
        server.stop()
    return before / 1024, (after_headers - before) / 1024, (after_watchers - after_headers) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    upstream = UpstreamProcess()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs = [run_once(Path(tmp), upstream) for _ in range(args.repeat)]
    finally:
        upstream.stop()
    baseline, headers, watchers = (median([r[i] for r in runs]) for i in range(3))
    print(f"Memory cost of hostile clients, medians of {args.repeat} runs; server RSS before: {baseline:.0f} MiB")
    print(f"  two unfinished 50 MiB headers: +{headers:.1f} MiB")
    print(f"  two SSE clients not reading a 10 MB answer: +{watchers:.1f} MiB")


if __name__ == "__main__":
    main()
