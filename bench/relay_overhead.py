"""Relay overhead of chat: time to first token through realtime-llm minus calling the
fake upstream directly, at several concurrencies, measured in the same run; over SSE (a
`POST /api/chat/{id}` each) or over WebSocket (a `message` frame on a socket opened
beforehand, as a browser keeps one, to its first `message` event).

    .venv/bin/python -m bench.relay_overhead [--concurrency 1 100] [--rounds 5] [--thinking] [--transport sse|ws]

With --thinking the model thinks first (delta.reasoning_content) and the time is to the
first thinking token: the first `reasoning` event through the server.

The upstream, the server and this load generator are three processes. Each stream asks for
a few tokens; TTFT is from sending the request to receiving the first content delta.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.common import UpstreamProcess, make_users, median, percentile, start_server

PROMPT = "#fake tokens=5 delay_ms=5\nhello"
THINKING_PROMPT = "#fake think=5 tokens=5 delay_ms=5\nhello"
# What marks the first token: in the upstream's stream, and in the server's.
MARKERS = {False: ('"content"', "event: message"), True: ('"reasoning_content"', "event: reasoning")}
thinking = False  # set by run()


async def direct_ttft(client: httpx.AsyncClient, url: str) -> float:
    prompt, (marker, _) = THINKING_PROMPT if thinking else PROMPT, MARKERS[thinking]
    body = {"model": "fake-bench", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    start = time.perf_counter()
    ttft = None
    async with client.stream("POST", url + "/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if ttft is None and marker in line:
                ttft = time.perf_counter() - start
    if ttft is None:
        raise RuntimeError("no token from the upstream")
    return ttft


async def relay_ttft(client: httpx.AsyncClient, headers: dict[str, str], cid: int) -> float:
    prompt, (_, marker) = THINKING_PROMPT if thinking else PROMPT, MARKERS[thinking]
    start = time.perf_counter()
    ttft = None
    async with client.stream("POST", f"/api/chat/{cid}", json={"message": prompt}, headers=headers) as response:
        async for line in response.aiter_lines():
            if ttft is None and line.startswith(marker):
                ttft = time.perf_counter() - start
    if ttft is None:
        raise RuntimeError(f"no token through the server (HTTP {response.status_code})")
    return ttft


async def socket_ttft(ws: ClientConnection) -> float:
    prompt, event = THINKING_PROMPT if thinking else PROMPT, "reasoning" if thinking else "message"
    start = time.perf_counter()
    await ws.send(orjson.dumps({"type": "message", "content": prompt}).decode())
    ttft = None
    while True:  # to the answer's end: the conversation is free for the next round
        frame = orjson.loads(await ws.recv())
        if ttft is None and frame["event"] == event:
            ttft = time.perf_counter() - start
        elif frame["event"] in ("full_response", "error"):
            break
    if ttft is None:
        raise RuntimeError(f"no token through the socket ({frame})")
    return ttft


async def measure(concurrency: int, rounds: int, upstream_url: str, server_url: str,
                  users: list[tuple[dict[str, str], int]], transport: str = "sse") -> tuple[list[float], list[float]]:
    limits = httpx.Limits(max_connections=concurrency * 2)
    direct: list[float] = []
    relay: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        up = await stack.enter_async_context(httpx.AsyncClient(timeout=60, limits=limits))
        srv = await stack.enter_async_context(httpx.AsyncClient(base_url=server_url, timeout=60, limits=limits))
        sockets = []
        if transport == "ws":
            for headers, cid in users[:concurrency]:
                ws = await stack.enter_async_context(connect(
                    server_url.replace("http://", "ws://") + f"/ws/conversations/{cid}", additional_headers=headers,
                    compression=None, max_size=None))
                assert orjson.loads(await ws.recv())["event"] == "ready"
                sockets.append(ws)
        for _ in range(rounds):  # alternate so both see the same machine noise
            direct += await asyncio.gather(*(direct_ttft(up, upstream_url) for _ in range(concurrency)))
            if transport == "ws":
                relay += await asyncio.gather(*(socket_ttft(ws) for ws in sockets))
            else:
                relay += await asyncio.gather(*(relay_ttft(srv, h, c) for h, c in users[:concurrency]))
    return direct, relay


def run(concurrencies: list[int], rounds: int, batch_ms: int = 25, first_thought: bool = False,
        transport: str = "sse") -> list[tuple[int, int, list[float], list[float]]]:
    """(concurrency, streams, direct TTFTs, relayed TTFTs) for each concurrency, in seconds;
    with `first_thought`, to the first thinking token."""
    global thinking
    thinking = first_thought
    upstream = UpstreamProcess()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = start_server(Path(tmp), upstream, stream={"batch_ms": batch_ms})
            try:
                users = make_users(server.url, max(concurrencies))
                rows = []
                for concurrency in concurrencies:
                    repeats = rounds * (20 if concurrency == 1 else 1)
                    asyncio.run(measure(concurrency, 1, upstream.base_url, server.url, users, transport))  # warm up
                    direct, relay = asyncio.run(measure(concurrency, repeats, upstream.base_url, server.url, users,
                                                        transport))
                    rows.append((concurrency, len(relay), direct, relay))
            finally:
                server.stop()
    finally:
        upstream.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-ms", type=int, default=25)
    parser.add_argument("--thinking", action="store_true", help="time to the first thinking token")
    parser.add_argument("--transport", choices=("sse", "ws"), default="sse")
    args = parser.parse_args()
    rows = run(args.concurrency, args.rounds, args.batch_ms, args.thinking, args.transport)
    what = "first thinking token (reasoning event)" if args.thinking else "first token"
    print(f"{'WebSocket' if args.transport == 'ws' else 'SSE'} time to {what}, ms "
          f"(direct = the fake upstream called without realtime-llm)")
    print(f"{'conc':>5} {'n':>5} {'direct p50':>11} {'relay p50':>10} {'added p50':>10}"
          f" {'direct p99':>11} {'relay p99':>10} {'added p99':>10}")
    for concurrency, n, direct, relay in rows:
        d50, r50 = median(direct) * 1000, median(relay) * 1000
        d99, r99 = percentile(direct, 0.99) * 1000, percentile(relay, 0.99) * 1000
        print(f"{concurrency:>5} {n:>5} {d50:>11.2f} {r50:>10.2f} {r50 - d50:>10.2f}"
              f" {d99:>11.2f} {r99:>10.2f} {r99 - d99:>10.2f}")


if __name__ == "__main__":
    main()
