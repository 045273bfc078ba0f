"""Many conversations streaming at once through 2 app processes, sharing one Redis or a
Redis Cluster of 3 masters (sharded pub/sub): events delivered per second, the delay p99,
and the Redis CPU per event delivered (INFO cpu, summed over the nodes; the busiest node's
share shows how the load spreads). Baseline: one Redis, in the same run.

    .venv/bin/python -m bench.cluster_fanout [--clients 100 200 400] [--tokens 60] [--repeat 3]

Each client has a conversation of its own and one WebSocket on it; the fake upstream
sends a token every 50 ms. Saturation: the first level whose p99 passes 50 ms or whose
events per second stop growing with the clients.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.common import UpstreamProcess, make_users, median, percentile, start_server
from bench.ws_streams import run_load
from tests.backends import PrivateRedis
from tests.rediscluster import RedisClusterNodes
from tests.servers import ServerProcess


def cpu_seconds(ports: list[int]) -> list[float]:
    used = []
    for port in ports:
        info = redis.Redis(port=port, socket_timeout=5).info("cpu")
        used.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return used


def measure(setup: str, servers: list[ServerProcess], ports: list[int], clients: int, tokens: int,
            repeat: int) -> dict[str, Any]:
    users = make_users(servers[0].url, clients)
    rates, p99s, per_event, busiest, failed = [], [], [], [], 0
    for _ in range(repeat):
        before = cpu_seconds(ports)
        rate, delays, failures = asyncio.run(run_load(servers, users, tokens))
        spent = [after - first for after, first in zip(cpu_seconds(ports), before, strict=True)]
        events = clients * tokens  # a message event per token, each to its one client
        rates.append(rate)
        p99s.append(percentile(delays, 0.99) * 1000)
        per_event.append(sum(spent) / events * 1e6)
        busiest.append(max(spent) / sum(spent) if sum(spent) else 0.0)
        failed += failures
    return {"setup": setup, "clients": clients, "events_per_s": median(rates), "p99_ms": median(p99s),
            "redis_us_per_event": median(per_event), "busiest_share": median(busiest), "failed": failed}


def run(client_counts: list[int], tokens: int, repeat: int) -> list[dict[str, Any]]:
    upstream = UpstreamProcess()
    single = PrivateRedis()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            cluster = RedisClusterNodes(workdir / "cluster", masters=3, replicas=0)
            try:
                setups: list[tuple[str, dict[str, Any], list[int]]] = [
                    ("one Redis", {"url": single.url}, [single.port]),
                    ("Redis Cluster, 3 masters", {"cluster_nodes": cluster.nodes}, cluster.ports)]
                for name, redis_config, ports in setups:
                    config = {"redis": {**redis_config, "key_prefix": f"bench-{uuid.uuid4().hex[:6]}"}}
                    first = start_server(workdir, upstream, **config)
                    pair = [first, ServerProcess(first.config_path, workdir).start()]
                    try:
                        for clients in client_counts:
                            rows.append(measure(name, pair, ports, clients, tokens, repeat))
                    finally:
                        for server in pair:
                            server.stop()
            finally:
                cluster.stop()
    finally:
        upstream.stop()
        single.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = run(args.clients, args.tokens, args.repeat)
    base = {row["clients"]: row for row in rows if row["setup"] == "one Redis"}
    print(f"Fan-out over 2 app processes, a token every 50 ms per conversation (medians of {args.repeat})")
    for row in rows:
        one = base[row["clients"]]
        print(f"  {row['setup']:26s} {row['clients']:4d} clients  {row['events_per_s']:7.0f} events/s "
              f"({row['events_per_s'] / one['events_per_s']:.2f}x)  p99 {row['p99_ms']:6.1f} ms  "
              f"Redis {row['redis_us_per_event']:5.1f} us/event ({row['redis_us_per_event'] / one['redis_us_per_event']:.2f}x), "
              f"busiest node {row['busiest_share']:.0%}  failed {row['failed']}")


if __name__ == "__main__":
    main()
