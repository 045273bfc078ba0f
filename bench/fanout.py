"""Fan-out: one answer watched by 1,000 sockets over 2 processes sharing Redis (figure 3;
target: delivery delay p99 <= 50 ms in issue 7, <= 15 ms in issue 21).

    .venv/bin/python -m bench.fanout [--sockets 1000] [--repeat 3] [--client lean|websockets]

Half the sockets on each process, all on one conversation; one of them asks for an
answer from the fake upstream (20 tokens/s, each stamped with its emission time). Delay =
receipt minus emission, over every token at every socket. The baseline in the same run is
the same answer watched by one socket. The sockets are bench.leanws's Watchers (the
`websockets` client, as before 2026-12-04, with --client websockets: it spends more CPU
per frame than the server, on the same cores, and its own queueing shows in the delays).
"""
from __future__ import annotations

import argparse
import asyncio
import re
import time

import orjson
import uvloop
from websockets.asyncio.client import connect

from bench import leanws
from bench.common import make_users, median, percentile, redis_pair
from bench.upload import status_kib
from tests.servers import ServerProcess

STAMP = re.compile(r"<(\d+\.\d+)>")


async def watch(url: str, headers: dict[str, str], cid: int, ready: asyncio.Event, go: asyncio.Event,
                delays: list[float], asking: bool, tokens: int) -> None:
    async with connect(f"{url}/ws/conversations/{cid}", additional_headers=headers, compression=None,
                       max_size=None, open_timeout=60) as ws:
        assert orjson.loads(await ws.recv())["event"] == "ready"
        ready.set()
        await go.wait()
        if asking:
            await ws.send(ask(tokens))
        while True:
            frame = orjson.loads(await ws.recv())
            now = time.time()
            if frame["event"] == "message":
                delays.extend(now - float(t) for t in STAMP.findall(frame["data"]))
            elif frame["event"] in ("full_response", "error"):
                return


def ask(tokens: int, delay_ms: int = 50) -> str:
    return orjson.dumps({"type": "message", "content": f"#fake tokens={tokens} delay_ms={delay_ms} stamp=1"}).decode()


def rss_kib(servers: list[ServerProcess]) -> int:
    return sum(status_kib(server.process.pid, "VmRSS") for server in servers if server.process is not None)


async def answers(servers: list[ServerProcess], conversations: list[tuple[dict[str, str], int]],
                  per_conversation: int, delay_ms: int = 50, tokens: int = 40) -> tuple[list[float], float]:
    """Every conversation watched by `per_conversation` lean sockets over `servers`, then
    all asked at once for `tokens` tokens `delay_ms` apart: (every delay, the servers' RSS
    growth per socket once all were ready)."""
    delays: list[float] = []
    before = rss_kib(servers)
    watchers: list[leanws.Watcher] = []
    askers = []
    for headers, cid in conversations:
        for k in range(per_conversation):
            server = servers[len(watchers) % len(servers)]
            watchers.append(await leanws.watch(server.url, f"/ws/conversations/{cid}", headers, delays))
            if k == 0:
                askers.append(watchers[-1])
            if len(watchers) % 100 == 0:  # connect in waves
                await asyncio.gather(*(w.ready for w in watchers[-100:]))
    async with asyncio.timeout(300):
        await asyncio.gather(*(w.ready for w in watchers))
    per_socket = (rss_kib(servers) - before) * 1024 / len(watchers)
    for asker in askers:
        asker.send_text(ask(tokens, delay_ms))
    async with asyncio.timeout(300):
        await asyncio.gather(*(w.done for w in watchers))
    for watcher in watchers:
        assert watcher.transport is not None
        watcher.transport.close()
    await asyncio.sleep(1)  # the servers see the sockets go before the next round
    return delays, per_socket


async def one_answer(servers: list[ServerProcess], headers: dict[str, str], cid: int, sockets: int,
                     tokens: int, client: str = "lean") -> list[float]:
    if client == "lean":
        return (await answers(servers, [(headers, cid)], sockets, tokens=tokens))[0]
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


def measure(sockets: int, repeat: int, tokens: int = 40, client: str = "lean") -> dict[str, float]:
    with redis_pair("fan") as pair:
        [(headers, cid)] = make_users(pair[0].url, 1)
        alone, crowd = [], []
        # (on uvloop, as the servers run, with the lean client; asyncio's loop as before with websockets)
        run = uvloop.run if client == "lean" else asyncio.run
        for _ in range(repeat):
            alone.append(percentile(run(one_answer(pair, headers, cid, 1, tokens, client)), 0.99) * 1000)
            crowd.append(percentile(run(one_answer(pair, headers, cid, sockets, tokens, client)), 0.99) * 1000)
    return {"sockets": sockets, "p99_one_ms": median(alone), "p99_ms": median(crowd)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--client", choices=("lean", "websockets"), default="lean")
    args = parser.parse_args()
    r = measure(args.sockets, args.repeat, client=args.client)
    print(f"One answer to {args.sockets} sockets over 2 processes + Redis ({args.client} client); "
          f"medians of {args.repeat} runs")
    print(f"  delivery delay p99 {r['p99_ms']:.1f} ms (one socket: {r['p99_one_ms']:.1f} ms; target <= 15 ms)")


if __name__ == "__main__":
    main()
