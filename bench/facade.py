"""The OpenAI-compatible façade's added time to first token (issue 19): a streamed
`POST /v1/chat/completions` through realtime-llm (relayed, no conversation) against the
same request to the fake upstream directly, alternating, 1 stream at a time, in the same run.

    .venv/bin/python -m bench.facade [--requests 200]

For comparison, the LiteLLM proxy added 12-20 ms on this machine (the project's baseline
figures, ../shared/DEPENDENCIES.md).
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import UpstreamProcess, make_users, median, percentile, start_server

BODY = {"model": "fake-bench", "stream": True, "messages": [{"role": "user", "content": "#fake tokens=5 delay_ms=5\nhi"}]}


async def ttft(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    async with client.stream("POST", url, json=BODY, headers=headers) as response:
        async for line in response.aiter_lines():
            if '"content":"t0' in line.replace(" ", ""):
                return time.perf_counter() - start
    raise RuntimeError(f"no first token (HTTP {response.status_code})")


async def measure(requests: int, upstream_url: str, server_url: str, headers: dict[str, str]) -> tuple[list[float], list[float]]:
    direct: list[float] = []
    facade: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):  # warm both
            await ttft(client, upstream_url + "/chat/completions", {})
            await ttft(client, server_url + "/v1/chat/completions", headers)
        for _ in range(requests):
            direct.append(await ttft(client, upstream_url + "/chat/completions", {}))
            facade.append(await ttft(client, server_url + "/v1/chat/completions", headers))
    return direct, facade


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    upstream = UpstreamProcess()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = start_server(Path(tmp), upstream)
            try:
                [(headers, _)] = make_users(server.url, 1)
                direct, facade = asyncio.run(measure(args.requests, upstream.base_url, server.url, headers))
            finally:
                server.stop()
    finally:
        upstream.stop()
    d50, f50 = median(direct) * 1000, median(facade) * 1000
    d99, f99 = percentile(direct, 0.99) * 1000, percentile(facade, 0.99) * 1000
    print(f"/v1/chat/completions time to first token, 1 stream, {args.requests} requests each (ms)")
    print(f"  upstream direct p50 {d50:.2f}  p99 {d99:.2f}")
    print(f"  through the façade p50 {f50:.2f}  p99 {f99:.2f}")
    print(f"  added p50 {f50 - d50:.2f}  p99 {f99 - d99:.2f}  (LiteLLM proxy here: +12-20 ms)")


if __name__ == "__main__":
    main()
