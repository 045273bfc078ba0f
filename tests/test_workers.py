"""`serve --workers N`: one port, N processes joined by Redis; a dead worker is replaced."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.backends import redis_url
from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, established_connections, worker_pids, write_config
from tests.test_chat import assert_complete, new_chat
from tests.wsclient import Socket


@pytest.fixture
def workers(database: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[ServerProcess]:
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database, upstream, redis_url()))
    server = ServerProcess(config, tmp_path, args=("--workers", "2")).start()
    deadline = time.monotonic() + 30  # /healthz answers once one worker is up; the parent
    while "listening on" not in server.log() and time.monotonic() < deadline:  # waits for all
        time.sleep(0.05)
    yield server
    if server.process.poll() is None:  # still running: it must stop cleanly, workers and all
        pids = worker_pids(server.process.pid)
        assert server.stop() == 0
        assert not any(alive(pid) for pid in pids)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def spread_sockets(server: ServerProcess, cid: int, headers: dict[str, str]) -> dict[int, list[Socket]]:
    """Open sockets one at a time until each worker holds at least one; {worker pid: sockets}."""
    pids = worker_pids(server.process.pid)
    assert len(pids) == 2, server.log()
    held: dict[int, list[Socket]] = {pid: [] for pid in pids}
    for _ in range(40):
        before = {pid: established_connections(pid, server.port) for pid in pids}
        socket = Socket(server.url, cid, headers)
        assert socket.recv()["event"] == "ready"
        after = {pid: established_connections(pid, server.port) for pid in pids}
        (owner,) = [pid for pid in pids if after[pid] > before[pid]]
        held[owner].append(socket)
        if all(held.values()):
            return held
    raise AssertionError(f"the kernel gave every connection to one worker: {server.log()}")


def metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def close_all(held: dict[int, list[Socket]]) -> None:
    for sockets in held.values():
        for socket in sockets:
            socket.close()


def test_two_workers_serve_one_port_and_share_streams(workers: ServerProcess) -> None:
    assert f"listening on http://127.0.0.1:{workers.port} |" in workers.log()
    assert "broker: redis" in workers.log() and "workers: 2" in workers.log()
    api = Api(workers.url)
    headers, cid = new_chat(api)
    held = spread_sockets(workers, cid, headers)
    try:
        sockets = [s for group in held.values() for s in group]
        # Open sockets are counted per process and summed over both in one scrape.
        assert metric(workers, "realtime_llm_open_websockets") == len(sockets)
        sockets[0].send({"type": "message", "content": "#fake tokens=30 delay_ms=5"})
        for socket in sockets:
            events = socket.recv_until("full_response")
            assert_complete(events, cid)
            assert events[-1]["data"] == "".join(f"t{i} " for i in range(30))
    finally:
        close_all(held)
        api.http.close()


def test_a_killed_worker_is_replaced_and_its_clients_resume(workers: ServerProcess) -> None:
    api = Api(workers.url)
    headers, cid = new_chat(api)
    held = spread_sockets(workers, cid, headers)
    generating, doomed = held  # the generation runs in the worker whose socket asks for it
    try:
        held[generating][0].send({"type": "message", "content": "#fake tokens=100 delay_ms=20"})
        victim = held[doomed][0]
        seen: list[dict[str, Any]] = []
        while len([e for e in seen if e["event"] == "message"]) < 10:
            seen.append(victim.recv())
        os.kill(doomed, signal.SIGKILL)
        try:  # read what was in flight until the dead process's socket is gone
            while True:
                seen.append(victim.recv(timeout=5))
        except Exception:
            pass
        # The client reconnects (to the same port: the surviving worker or the new one) and resumes.
        with Socket(workers.url, cid, headers, query=f"last_event_id={seen[-1]['id']}") as again:
            assert again.recv()["event"] == "ready"
            seen.extend(again.recv_until("full_response"))
        assert_complete(seen, cid)
        assert seen[-1]["data"] == "".join(f"t{i} " for i in range(100))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = worker_pids(workers.process.pid)
            if len(pids) == 2 and doomed not in pids:
                break
            time.sleep(0.1)
        assert len(pids) == 2 and doomed not in pids, workers.log()
        assert "exited with -9; starting another in 1s" in workers.log()
        assert httpx.get(workers.url + "/readyz").status_code == 200
    finally:
        close_all(held)
        api.http.close()


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    config = base_config(tmp_path, "postgresql://nobody@127.0.0.1:9/none", None, redis_url())
    path = write_config(tmp_path / "config.yaml", config)
    server = ServerProcess(path, tmp_path, args=("--workers", "2"))
    with pytest.raises(RuntimeError, match="exited with 3"):
        server.start(timeout=60)
    assert "could not start" in server.log()


def test_workers_stop_when_the_parent_is_killed(workers: ServerProcess) -> None:
    """kill -9 of the parent leaves no worker serving unsupervised (Linux parent-death signal)."""
    pids = worker_pids(workers.process.pid)
    assert len(pids) == 2
    workers.process.kill()
    workers.process.wait(10)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)
