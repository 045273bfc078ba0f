"""What a Lua script call costs this process's CPU: the broker's publish script called by
many tasks at once (as 50 streams publish their batches), through redis-py's client on
its blocking pool (what every other command uses) and through the pipelined connection
(realtime_llm/redispipeline.py, what the server's scripts use on a single Redis).

    .venv/bin/python -m bench.redis_calls [--callers 50] [--calls 200] [--runs 5]

CPU time (process_time) per call, medians of --runs, on a redis-server of its own.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis

from bench.common import median
from realtime_llm.broker.redis import PUBLISH
from realtime_llm.config import RedisSettings
from realtime_llm.redisclient import single_client
from tests.backends import PrivateRedis

EVENT = [b'{"event":"message","data":"t1 t2 t3 ","id":', b',"conversation_id":1}', 2000, 3600]


async def cost(call: Callable[[int], Awaitable[Any]], callers: int, calls: int, runs: int) -> float:
    """Microseconds of CPU per call, `callers` tasks making `calls` each."""
    async def caller(n: int) -> None:
        for _ in range(calls):
            await call(n)

    await asyncio.gather(*(caller(n) for n in range(callers)))  # warm: connections made
    samples = []
    for _ in range(runs):
        started = time.process_time()
        await asyncio.gather(*(caller(n) for n in range(callers)))
        samples.append((time.process_time() - started) / (callers * calls) * 1e6)
    return median(samples)


async def measure(url: str, callers: int, calls: int, runs: int) -> dict[str, float]:
    pipelined = single_client(RedisSettings(url=url))
    pooled = aioredis.Redis(connection_pool=pipelined.connection_pool)  # the same pool, scripts through it
    results = {}
    try:
        for name, client in (("redis-py, blocking pool", pooled), ("pipelined connection", pipelined)):
            publish = client.register_script(PUBLISH)
            await pipelined.flushdb()

            async def call(n: int, publish: Any = publish) -> Any:
                return await publish(keys=[f"c{n}:seq", f"c{n}:events"], args=[*EVENT, f"c{n}:live", 3600])

            for n in range(callers):
                await pipelined.set(f"c{n}:seq", 0)
            results[name] = await cost(call, callers, calls, runs)
    finally:
        await pipelined.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    private = PrivateRedis()
    try:
        results = asyncio.run(measure(private.url, args.callers, args.calls, args.runs))
    finally:
        private.stop()
    print(f"a publish script, {args.callers} callers at once, CPU of this process per call (median of {args.runs})")
    baseline = results["redis-py, blocking pool"]
    for name, micros in results.items():
        print(f"  {name:<26} {micros:6.1f} µs  {micros / baseline:5.2f}x")


if __name__ == "__main__":
    main()
