"""realtime-llm beside the LiteLLM proxy (issue 21): the same load, through each in turn,
from the same fake upstream and the same closed-loop client, in one run.

    .venv/bin/python -m bench.peers [--litellm PATH] [--streams 50] [--seconds 6] [--rounds 2] [--requests 100]

The client speaks OpenAI's streamed chat completions to each: realtime-llm's façade
(`POST /v1/chat/completions` with a `conversation_id`: each question and answer saved,
and the answer published to the conversation's subscribers, as a chat message is), once
with the in-process broker and once with a Redis of the benchmark's own, and
the proxy's, which stores nothing and checks no ownership. The proxy runs when it is
installed in a venv of its own (`--litellm`, default $LITELLM_BIN):

    python3 -m venv /work/.peers/litellm && /work/.peers/litellm/bin/pip install 'litellm[proxy]==1.108.7'

with one worker, no database, LITELLM_LOCAL_MODEL_COST_MAP=True and a master key (it
refuses to start without one), which the client sends. Figures: added time
to first token with one stream (p50, against the upstream called directly, the targets
alternating request by request); at `--streams` closed-loop streams of 50-token answers,
tokens/s and the server's CPU (utime + stime of its processes) per 1,000 tokens.
"""
from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import httpx
import orjson

from bench.common import UpstreamProcess, make_users, median, start_server
from bench.relay_cpu import cpu_seconds
from realtime_llm.providers.sse_reader import sse_data
from tests.backends import PrivateRedis
from tests.servers import free_port, terminate

ANSWER = "#fake tokens=50 delay_ms=5\nhello"


class Target:
    """A server the client talks to: its chat-completions URL, headers and extra body per
    stream, and the pids whose CPU is counted."""

    def __init__(self, name: str, url: str, pids: list[int], streams: list[tuple[dict[str, str], dict[str, Any]]]):
        self.name, self.url, self.pids, self.streams = name, url, pids, streams

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)


class LiteLLMProcess:
    def __init__(self, binary: str, upstream: UpstreamProcess, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "litellm.yaml"
        config.write_text(orjson.dumps({"model_list": [{"model_name": "fake-bench", "litellm_params": {
            "model": "openai/fake-bench", "api_base": upstream.base_url, "api_key": "sk-bench"}}]}).decode())
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        self.key = env["LITELLM_MASTER_KEY"] = f"sk-{secrets.token_hex(32)}"
        self.log = open(workdir / "litellm.log", "ab")
        self.process = subprocess.Popen([binary, "--config", str(config), "--host", "127.0.0.1", "--port",
                                         str(self.port), "--num_workers", "1"], env=env, cwd=workdir,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"litellm exited with {self.process.returncode}; see {workdir / 'litellm.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("litellm did not start within 120 s")

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()


async def text_of(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    async for chunk in response.content.iter_any():
        yield decoder.decode(chunk)


async def answer(session: aiohttp.ClientSession, target: Target, stream: int, first_token: list[float] | None = None,
                 window: tuple[float, float] | None = None) -> int:
    """One streamed answer; the tokens received within `window` (all, without one). With
    `first_token`, the time to the first token is appended to it."""
    headers, extra = target.streams[stream]
    body = {"model": "fake-bench", "stream": True, "messages": [{"role": "user", "content": ANSWER}], **extra}
    started = time.perf_counter()
    tokens = 0
    async with session.post(target.url, data=orjson.dumps(body),
                            headers={**headers, "Content-Type": "application/json"}) as response:
        if response.status != 200:
            raise RuntimeError(f"{target.name}: HTTP {response.status} {(await response.text())[:200]}")
        async for payload in sse_data(text_of(response)):  # (bench.upstream splits its JSON over lines)
            if not payload.startswith("{"):
                continue  # [DONE]
            choices = orjson.loads(payload).get("choices") or [{}]
            content = (choices[0].get("delta") or {}).get("content") or ""
            if content and first_token is not None and not tokens:
                first_token.append(time.perf_counter() - started)
            now = time.monotonic()
            if window is None or window[0] <= now < window[1]:
                tokens += content.count(" ")
    return tokens


async def first_tokens(targets: list[Target], requests: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {t.name: [] for t in targets}
    async with aiohttp.ClientSession() as session:
        for i in range(requests + 3):
            for target in targets:
                got: list[float] = []
                await answer(session, target, 0, first_token=got)
                if i >= 3:  # the first three warm every target
                    times[target.name].extend(got)
    return times


async def closed_loop(target: Target, streams: int, seconds: float) -> tuple[float, float]:
    """(tokens/s, CPU ms per 1,000 tokens) over `seconds`, after a second of warm-up."""
    start = time.monotonic() + 1.0
    window = (start, start + seconds)
    counted = [0]

    async def client(stream: int) -> None:
        while time.monotonic() < window[1]:
            got = await answer(session, target, stream, window=window)
            counted[0] += got  # (not `+= await`: that reads counted[0] before the wait, and loses the others')

    async def cpu() -> float:
        await asyncio.sleep(window[0] - time.monotonic())
        before = target.cpu()
        await asyncio.sleep(window[1] - time.monotonic())
        return target.cpu() - before

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        used = asyncio.create_task(cpu())
        await asyncio.gather(*(client(i) for i in range(streams)))
        spent = await used
    return counted[0] / seconds, spent * 1000 / max(counted[0], 1) * 1000


def run(litellm: str | None, streams: int, seconds: float, rounds: int, requests: int) -> list[tuple[str, float, float, float]]:
    """Rows (target, added first-token p50 ms, tokens/s, CPU ms per 1,000 tokens)."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:  # stopped before tmp goes
        workdir = Path(tmp)
        upstream = UpstreamProcess()
        running.callback(upstream.stop)
        private = PrivateRedis()
        running.callback(private.stop)
        targets = []
        for broker, sections in (("in-process broker", {}),
                                 ("Redis", {"redis": {"url": private.url, "key_prefix": f"peers-{secrets.token_hex(3)}"}})):
            server = start_server(workdir, upstream, **sections)
            running.callback(server.stop)
            assert server.process is not None
            targets.append(Target(f"realtime-llm (SQLite, {broker})", server.url + "/v1/chat/completions",
                                  [server.process.pid],
                                  [(headers, {"conversation_id": cid}) for headers, cid in make_users(server.url, streams)]))
        if litellm:
            peer = LiteLLMProcess(litellm, upstream, workdir)
            running.callback(peer.stop)
            targets.append(Target("LiteLLM proxy 1.108.7", f"http://127.0.0.1:{peer.port}/chat/completions",
                                  [peer.process.pid], [({"Authorization": f"Bearer {peer.key}"}, {})] * streams))
        direct = Target("upstream, direct", upstream.base_url + "/chat/completions", [upstream.process.pid],
                        [({}, {})] * streams)
        firsts = asyncio.run(first_tokens([direct, *targets], requests))
        loads: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
        for _ in range(rounds):
            for target in targets:
                loads[target.name].append(asyncio.run(closed_loop(target, streams, seconds)))
        baseline = median(firsts[direct.name])
        return [(t.name, (median(firsts[t.name]) - baseline) * 1000, median([r for r, _ in loads[t.name]]),
                 median([c for _, c in loads[t.name]])) for t in targets]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--litellm", default=os.environ.get("LITELLM_BIN"))
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    if not args.litellm:
        print("The LiteLLM proxy is not installed (--litellm or $LITELLM_BIN): realtime-llm alone.", file=sys.stderr)
    rows = run(args.litellm, args.streams, args.seconds, args.rounds, args.requests)
    print(f"Same fake upstream, same client; first token: p50 of {args.requests} requests, 1 stream; "
          f"{args.streams} closed-loop streams of 50-token answers, medians of {args.rounds} rounds of "
          f"{args.seconds:.0f} s")
    print(f"{'':<42} {'added first token p50':>22} {'tokens/s':>9} {'CPU ms/1k tokens':>17}")
    for name, added, rate, cpu in rows:
        print(f"{name:<42} {added:>19.1f} ms {rate:>9.0f} {cpu:>17.0f}")


if __name__ == "__main__":
    main()
