"""Fan-out: one answer watched by 1,000 sockets over 2 processes sharing Redis (issue 7,
figure 3; target: delivery delay p99 <= 50 ms).

    .venv/bin/python -m bench.fanout [--sockets 1000] [--repeat 3]

Half the sockets on each process, all on one conversation; one of them asks for an
answer from the fake upstream (20 tokens/s, each stamped with its emission time). Delay =
receipt minus emission, over every token at every socket. The baseline in the same run is
the same answer watched by one socket.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from bench.common import UpstreamProcess, make_users, median, percentile, start_server
from tests.backends import PrivateRedis
from tests.servers import ServerProcess

STAMP = re.compile(r"<(\d+\.\d+)>")


async def watch(url: str, headers: dict[str, str], cid: int, ready: asyncio.Event, go: asyncio.Event,
                delays: list[float], ask: bool, tokens: int) -> None:
    async with connect(f"{url}/ws/conversations/{cid}", additional_headers=headers, compression=None,
                       max_size=None, open_timeout=60) as ws:
        assert orjson.loads(await ws.recv())["event"] == "ready"
        ready.set()
        await go.wait()
        if ask:
            await ws.send(orjson.dumps({"type": "message",
                                        "content": f"#fake tokens={tokens} delay_ms=50 stamp=1"}).decode())
        while True:
            frame = orjson.loads(await ws.recv())
            now = time.time()
            if frame["event"] == "message":
                delays.extend(now - float(t) for t in STAMP.findall(frame["data"]))
            elif frame["event"] in ("full_response", "error"):
                return


async def one_answer(servers: list[ServerProcess], headers: dict[str, str], cid: int, sockets: int,
                     tokens: int) -> list[float]:
    delays: list[float] = []
    go = asyncio.Event()
    readies = [asyncio.Event() for _ in range(sockets)]
    tasks = []
    for i in range(sockets):
        url = servers[i % len(servers)].url.replace("http://", "ws://")
        tasks.append(asyncio.create_task(watch(url, headers, cid, readies[i], go, delays, i == 0, tokens)))
        if i % 100 == 99:
            await asyncio.gather(*(r.wait() for r in readies[:i + 1]))  # connect in waves
    await asyncio.gather(*(r.wait() for r in readies))
    go.set()
    await asyncio.gather(*tasks)
    return delays


def measure(sockets: int, repeat: int, tokens: int = 40) -> dict[str, float]:
    upstream = UpstreamProcess()
    private = PrivateRedis()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            first = start_server(workdir, upstream, redis={"url": private.url, "key_prefix": f"fan-{uuid.uuid4().hex[:6]}"})
            pair = [first, ServerProcess(first.config_path, workdir).start()]
            try:
                [(headers, cid)] = make_users(first.url, 1)
                alone, crowd = [], []
                for _ in range(repeat):
                    alone.append(percentile(asyncio.run(one_answer(pair, headers, cid, 1, tokens)), 0.99) * 1000)
                    crowd.append(percentile(asyncio.run(one_answer(pair, headers, cid, sockets, tokens)), 0.99) * 1000)
            finally:
                for server in pair:
                    server.stop()
    finally:
        upstream.stop()
        private.stop()
    return {"sockets": sockets, "p99_one_ms": median(alone), "p99_ms": median(crowd)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    r = measure(args.sockets, args.repeat)
    print(f"One answer to {args.sockets} sockets over 2 processes + Redis; medians of {args.repeat} runs")
    print(f"  delivery delay p99 {r['p99_ms']:.1f} ms (one socket: {r['p99_one_ms']:.1f} ms; target <= 50 ms)")


if __name__ == "__main__":
    main()
