"""Latency of register, login and an authenticated list, against the real server on defaults.

    .venv/bin/python -m bench.api_latency [--requests 200]

Prints the median and p99 of each over N sequential requests, and the bare /healthz
round trip measured in the same run as the baseline.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import NO_RATE_LIMITS
from tests.servers import ServerProcess, write_config


def timed(call) -> float:
    start = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status_code < 300, response.text
    return elapsed


def summary(name: str, samples: list[float], baseline: float) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{name:<34} {p50:9.2f} {p99:9.2f} {p50 / baseline:9.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = write_config(workdir / "config.yaml", {"sqlite": {"path": str(workdir / "bench.db")},
                                                        "limits": NO_RATE_LIMITS})
        server = ServerProcess(config, workdir).start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                health = [timed(lambda: http.get("/healthz")) for _ in range(args.requests)]
                names = [f"bench_{uuid.uuid4().hex[:12]}" for _ in range(args.requests)]
                body = lambda n: {"username": n, "password": "benchmark password"}  # noqa: E731
                register = [timed(lambda n=n: http.post("/api/users/register", json=body(n))) for n in names]
                login = [timed(lambda n=n: http.post("/api/users/login", json=body(n))) for n in names]
                token = http.post("/api/users/login", json=body(names[0])).json()["token"]
                headers = {"Authorization": f"Bearer {token}"}
                for i in range(20):
                    http.post("/api/conversations/create", json={"title": f"c{i}"}, headers=headers)
                listing = [timed(lambda: http.get("/api/conversations/list", headers=headers)) for _ in range(args.requests)]
        finally:
            server.stop()
    baseline = statistics.median(health)
    print(f"{args.requests} sequential requests each, bcrypt cost 12 (the default), SQLite")
    print(f"{'request':<34} {'p50 ms':>9} {'p99 ms':>9} {'vs healthz':>10}")
    print(summary("GET /healthz (baseline)", health, baseline))
    print(summary("POST /api/users/register", register, baseline))
    print(summary("POST /api/users/login", login, baseline))
    print(summary("GET /api/conversations/list (20)", listing, baseline))


if __name__ == "__main__":
    main()
