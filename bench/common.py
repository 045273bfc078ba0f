"""Shared pieces of the benchmarks: processes, percentiles, users."""
from __future__ import annotations

import contextlib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx

from tests.backends import PrivateRedis
from tests.servers import ServerProcess, free_port, write_config


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def start_module(args: list[str], probe: Callable[[], object], what: str,
                 timeout: float = 20.0) -> subprocess.Popen[bytes]:
    """`python -m <args>`, once `probe` (an HTTP request to it) succeeds; an error at once
    if the process exits first, and the process stopped if it is not up in `timeout`."""
    process = subprocess.Popen([sys.executable, "-m", *args])
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            probe()
            return process
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                stop_processes([process])
                raise RuntimeError(f"{what} did not start in {timeout:g} s") from None
            time.sleep(0.05)


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Terminate them all, then wait for each; one that does not end in 10 s is killed."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class UpstreamProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = start_module(
            ["bench.upstream", str(self.port)],
            lambda: httpx.post(self.base_url + "/chat/completions", json={"messages": []}, timeout=1),
            "the bench upstream")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        stop_processes([self.process])


NO_RATE_LIMITS = {"login_attempts_per_minute_per_username": 0, "login_attempts_per_minute_per_address": 0,
                  "registrations_per_hour_per_address": 0, "messages_per_minute_per_user": 0,
                  "ws_frames_per_10_seconds": 0, "websockets_per_user": 0, "uploads_per_minute_per_user": 0}


def start_server(workdir: Path, upstream: UpstreamProcess, **sections: Any) -> ServerProcess:
    config: dict[str, Any] = {
        "sqlite": {"path": str(workdir / f"bench-{uuid.uuid4().hex[:6]}.db")},
        "auth": {"bcrypt_rounds": 4},
        "limits": NO_RATE_LIMITS,  # load generators register and chat far more than people
        "llm": {
            "default_model": "demo",
            "providers": [
                {"name": "demo", "kind": "demo", "models": ["demo"]},
                {"name": "fake", "kind": "openai", "base_url": upstream.base_url, "models": ["fake-*"],
                 "api_key": "sk-bench"},
            ],
        },
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = write_config(workdir / f"config-{uuid.uuid4().hex[:6]}.yaml", config)
    return ServerProcess(path, workdir).start()


def make_users(base_url: str, count: int) -> list[tuple[dict[str, str], int]]:
    """`count` users, each with one fake-model conversation: (auth headers, conversation id)."""
    result = []
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for _ in range(count):
            name = f"bench_{uuid.uuid4().hex[:12]}"
            credentials = {"username": name, "password": "benchmark password"}
            http.post("/api/users/register", json=credentials).raise_for_status()
            token = http.post("/api/users/login", json=credentials).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            cid = http.post("/api/conversations/create", json={"model": "fake-bench"}, headers=headers).json()["conversation_id"]
            result.append((headers, cid))
    return result


@contextlib.contextmanager
def redis_pair(name: str) -> Iterator[tuple[list[ServerProcess], str]]:
    """Two server processes sharing a redis-server of their own (key prefix `name`-...),
    with a fake upstream, and that Redis's URL; all stopped after."""
    upstream = UpstreamProcess()
    private = PrivateRedis()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            first = start_server(workdir, upstream, redis={"url": private.url, "key_prefix": f"{name}-{uuid.uuid4().hex[:6]}"})
            pair = [first]
            try:
                pair.append(ServerProcess(first.config_path, workdir).start())
                yield pair, private.url
            finally:
                for server in pair:
                    server.stop()
    finally:
        upstream.stop()
        private.stop()


def wait_for_search_index(path: Path, timeout: float = 120.0) -> None:
    """Rows written straight into a SQLite file are indexed for search by the server's
    rounds, behind them (store/searchindex.py): wait until they are, so that what a
    benchmark times next is not timed with that work."""
    began = time.monotonic()
    database = sqlite3.connect(path)
    try:
        while database.execute("SELECT count(*) FROM messages_fts_pending").fetchone()[0]:
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"the server did not index {path}'s messages in {timeout:g} s")
            time.sleep(0.1)
    finally:
        database.close()
