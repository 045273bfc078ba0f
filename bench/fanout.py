"""Fan-out: one answer watched by 1,000 sockets over 2 processes sharing Redis (figure 3;
target: delivery delay p99 <= 50 ms in issue 7, <= 15 ms in issue 21).

    .venv/bin/python -m bench.fanout [--sockets 1000] [--repeat 3] [--client lean|websockets]

Half the sockets on each process, all on one conversation; one of them asks for an
answer from the fake upstream (20 tokens/s, each stamped with its emission time). Delay =
receipt minus emission, over every token at every socket. The baselines in the same run:
the same answer watched by one socket, and the bare fan-out (bench.bare_fanout: two
processes of a bare Starlette app writing each message of a Redis channel to all their
sockets, the stack's own cost) to as many sockets of the same client, its tokens published
on that channel as the fake upstream emits them; the two run alternately, each round in the
other order. Beside the delays, the two processes' CPU from the ask to the answer's end per
1,000 frames the sockets received, steadier than a p99. The server's includes the answer's
own generation (the upstream read, the publishes, the save, three more events to every
socket), and its message events are about twice the bare ones' bytes (an id and the
conversation's id): a few per cent at 1,000 sockets. The sockets are bench.leanws's Watchers
(the `websockets` client, as before 2026-12-04, with --client websockets, and then no bare
fan-out: it spends more CPU per frame than the server, on the same cores, and its own
queueing shows in the delays).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, NamedTuple

import httpx
import orjson
import redis.asyncio as aioredis
import uvloop
from websockets.asyncio.client import connect

from bench import leanws
from bench.common import make_users, median, percentile, redis_pair, start_module, stop_processes
from bench.upload import status_kib
from tests.servers import ServerProcess, free_port

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


class Fanned(NamedTuple):
    delays: list[float]  # every token at every socket, in seconds
    kib_per_socket: float  # the processes' RSS growth per socket once all were ready
    cpu_ms: float  # the processes' CPU from the ask to the last socket's end, per 1,000 frames received


def rss_kib(pids: list[int]) -> int:
    return sum(status_kib(pid, "VmRSS") for pid in pids)


def cpu_ms(pids: list[int]) -> float:
    """The CPU time so far of the processes' threads alive now, in nanoseconds' resolution
    (schedstat; /proc's stat counts 10 ms ticks, a few per cent of a round here)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # (a thread that ended meanwhile)
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e6


async def watched(urls: list[str], paths: list[tuple[dict[str, str], str]], per_path: int,
                  pids: list[int], asks: Callable[[list[leanws.Watcher]], Awaitable[None]]) -> Fanned:
    """Every path watched by `per_path` lean sockets spread over `urls`; then `asks` is given
    each path's first socket and returns once every answer was asked or published, and the
    sockets are read to their answers' ends."""
    delays: list[float] = []
    before = rss_kib(pids)
    watchers: list[leanws.Watcher] = []
    askers = []
    try:
        for headers, path in paths:
            for k in range(per_path):
                watchers.append(await leanws.watch(urls[len(watchers) % len(urls)], path, headers, delays))
                if k == 0:
                    askers.append(watchers[-1])
                if len(watchers) % 100 == 0:  # connect in waves
                    await asyncio.gather(*(w.ready for w in watchers[-100:]))
        async with asyncio.timeout(300):
            await asyncio.gather(*(w.ready for w in watchers))
        per_socket = (rss_kib(pids) - before) * 1024 / len(watchers)
        cpu_before, frames_before = cpu_ms(pids), sum(w.frames for w in watchers)
        await asks(askers)
        async with asyncio.timeout(300):
            await asyncio.gather(*(w.done for w in watchers))
        cpu = (cpu_ms(pids) - cpu_before) * 1000 / max(1, sum(w.frames for w in watchers) - frames_before)
    finally:
        for watcher in watchers:
            if watcher.transport is not None:
                watcher.transport.close()
    await asyncio.sleep(1)  # the servers see the sockets go before the next round
    return Fanned(delays, per_socket / 1024, cpu)


async def answers(servers: list[ServerProcess], conversations: list[tuple[dict[str, str], int]],
                  per_conversation: int, delay_ms: int = 50, tokens: int = 40) -> Fanned:
    """Every conversation watched by `per_conversation` lean sockets over `servers`, then
    all asked at once for `tokens` tokens `delay_ms` apart."""
    async def asks(askers: list[leanws.Watcher]) -> None:
        for asker in askers:
            asker.send_text(ask(tokens, delay_ms))

    pids = [server.process.pid for server in servers if server.process is not None]
    return await watched([server.url for server in servers],
                         [(headers, f"/ws/conversations/{cid}") for headers, cid in conversations],
                         per_conversation, pids, asks)


async def one_answer(servers: list[ServerProcess], headers: dict[str, str], cid: int, sockets: int,
                     tokens: int, client: str = "lean") -> list[float]:
    if client == "lean":
        return (await answers(servers, [(headers, cid)], sockets, tokens=tokens)).delays
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


class BareFanout:
    """Two bench.bare_fanout processes on one Redis channel: the stack's own fan-out."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url, self.channel = redis_url, f"bare-{uuid.uuid4().hex[:8]}"
        self.ports = [free_port(), free_port()]
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            for port, url in zip(self.ports, self.urls, strict=True):
                self.processes.append(start_module(["bench.bare_fanout", str(port), redis_url, self.channel],
                                                   functools.partial(httpx.get, url + "/healthz", timeout=1),
                                                   "the bare fan-out"))
        except Exception:
            self.stop()
            raise

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def stop(self) -> None:
        stop_processes(self.processes)

    def missed(self) -> int:
        """Frames the processes refused or failed to write so far."""
        return sum(sum(httpx.get(url + "/healthz", timeout=5).json().values()) for url in self.urls)

    async def answer(self, sockets: int, tokens: int, delay_ms: int) -> Fanned:
        """One answer of `tokens` stamped tokens `delay_ms` apart, published on the channel as
        the server's fake upstream emits them, to `sockets` lean sockets over both processes."""
        async def publish(askers: list[leanws.Watcher]) -> None:  # (there is no one to ask)
            client = aioredis.Redis.from_url(self.redis_url, socket_timeout=10)
            try:
                for _ in range(tokens):
                    await asyncio.sleep(delay_ms / 1000)
                    message = {"event": "message", "data": f"<{time.time():.6f}>"}
                    await client.publish(self.channel, orjson.dumps(message))
                await client.publish(self.channel, b'{"event":"full_response","data":""}')
            finally:
                await client.aclose()

        missed = self.missed()
        try:
            return await watched(self.urls, [({}, "/ws/conversations/0")], sockets,
                                 [process.pid for process in self.processes], publish)
        finally:
            if (missed := self.missed() - missed) > 0:  # (a refused full_response leaves its socket waiting)
                raise RuntimeError(f"the bare fan-out missed {missed} frames: its delays lack the late ones")


def p99_ms(delays: list[float]) -> float:
    return percentile(delays, 0.99) * 1000


def alternately(k: int, ours: Callable[[], Coroutine[Any, Any, Fanned]],
                bare: Callable[[], Coroutine[Any, Any, Fanned]]) -> tuple[Fanned, Fanned]:
    """Both rounds, ours first in even rounds `k` and second in odd ones, so that neither
    always runs right after the other (what one leaves to do falls on the next)."""
    if k % 2 == 0:
        first = uvloop.run(ours())
        return first, uvloop.run(bare())
    second = uvloop.run(bare())
    return uvloop.run(ours()), second


def measure(sockets: int, repeat: int, tokens: int = 40, client: str = "lean") -> dict[str, float]:
    """Medians over `repeat` rounds of the p99 delays (ms) of one socket, of `sockets` and,
    with the lean client, of the bare fan-out to as many; and both fan-outs' CPU per 1,000
    frames received (ms)."""
    rounds: dict[str, list[float]] = {"p99_one_ms": [], "p99_ms": [], "p99_bare_ms": [], "cpu_ms": [],
                                      "cpu_bare_ms": []}
    with redis_pair("fan") as (pair, redis_url):
        [(headers, cid)] = make_users(pair[0].url, 1)
        bare = BareFanout(redis_url) if client == "lean" else None
        # (on uvloop, as the servers run, with the lean client; asyncio's loop as before with websockets)
        run = uvloop.run if client == "lean" else asyncio.run
        try:
            for _ in range(repeat):
                rounds["p99_one_ms"].append(p99_ms(run(one_answer(pair, headers, cid, 1, tokens, client))))
                if bare is None:
                    rounds["p99_ms"].append(p99_ms(run(one_answer(pair, headers, cid, sockets, tokens, client))))
                    continue
                ours, floor = alternately(len(rounds["p99_ms"]),
                                          lambda: answers(pair, [(headers, cid)], sockets, tokens=tokens),
                                          lambda: bare.answer(sockets, tokens, 50))
                rounds["p99_ms"].append(p99_ms(ours.delays))
                rounds["cpu_ms"].append(ours.cpu_ms)
                rounds["p99_bare_ms"].append(p99_ms(floor.delays))
                rounds["cpu_bare_ms"].append(floor.cpu_ms)
        finally:
            if bare is not None:
                bare.stop()
    return {"sockets": sockets, **{name: median(values) if values else float("nan")
                                   for name, values in rounds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--client", choices=("lean", "websockets"), default="lean")
    args = parser.parse_args()
    r = measure(args.sockets, args.repeat, client=args.client)
    print(f"One answer to {args.sockets} sockets over 2 processes + Redis ({args.client} client); "
          f"medians of {args.repeat} runs")
    print(f"  delivery delay p99 {r['p99_ms']:.1f} ms (target <= 15 ms); one socket: {r['p99_one_ms']:.1f} ms")
    if args.client == "lean":
        print(f"  the bare fan-out (bench.bare_fanout), same sockets and client: p99 {r['p99_bare_ms']:.1f} ms "
              f"({r['p99_ms'] / r['p99_bare_ms']:.2f}x)")
        print(f"  the two processes' CPU per 1,000 frames received: {r['cpu_ms']:.1f} ms, bare "
              f"{r['cpu_bare_ms']:.1f} ms ({r['cpu_ms'] / r['cpu_bare_ms']:.2f}x)")


if __name__ == "__main__":
    main()
