"""SIGTERM: stop accepting, let running answers finish within the grace period (else stop and
save them), then end streams and close sockets with 1001 so clients reconnect elsewhere."""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import iter_frames
from tests.test_chat import history, new_chat
from tests.wsclient import Socket


def start_server(tmp_path: Path, database: str, broker: str, upstream: FakeUpstream,
                 grace: float) -> tuple[Path, ServerProcess]:
    config = base_config(tmp_path, database, upstream, broker)
    config["server"]["shutdown_grace_seconds"] = grace
    path = write_config(tmp_path / "config.yaml", config)
    return path, ServerProcess(path, tmp_path).start()


def watch_sse(api: Api, headers: dict[str, str], cid: int, into: list[dict[str, Any]]) -> threading.Thread:
    def watch() -> None:
        with api.http.stream("GET", f"/api/chat/{cid}/events", headers=headers) as response:
            into.extend(e for e in iter_frames(response.iter_lines()) if e is not None)

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher


def read_to_close(socket: Socket) -> tuple[list[dict[str, Any]], int | None]:
    frames = []
    try:
        while True:
            frames.append(socket.recv(timeout=15))
    except Exception:
        return frames, socket.conn.close_code


def test_sigterm_lets_a_running_answer_finish(database: str, broker: str, upstream: FakeUpstream,
                                              tmp_path: Path) -> None:
    """Within the grace period the answer completes for every watcher and is saved whole;
    meanwhile the process says it is draining and starts nothing new."""
    config, server = start_server(tmp_path, database, broker, upstream, grace=20)
    api = Api(server.url)
    headers, cid = new_chat(api)
    other = api.create_conversation(headers, model="fake-model")["conversation_id"]
    probe = httpx.Client(base_url=server.url, timeout=10)  # a kept-alive connection made before SIGTERM
    assert probe.get("/readyz").status_code == 200
    sse_frames: list[dict[str, Any]] = []
    try:
        with Socket(server.url, cid, headers) as socket, Socket(server.url, other, headers) as idle:
            assert socket.recv()["event"] == "ready" and idle.recv()["event"] == "ready"
            watcher = watch_sse(api, headers, cid, sse_frames)
            socket.send({"type": "message", "content": "#fake tokens=150 delay_ms=20"})  # ~3 s
            socket.recv_until("message")
            server.process.send_signal(signal.SIGTERM)
            # A socket watching no answer here is sent away at once, to reconnect elsewhere.
            assert idle.recv(timeout=2)["event"] == "error"
            assert idle.close_code(timeout=2) == 1001
            health = probe.get("/healthz")  # alive, but taking no new work
            assert health.status_code == 200 and health.json()["status"] == "draining"
            ready = probe.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            refused = probe.post(f"/api/chat/{other}", json={"message": "hello"}, headers=headers)
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
            frames, code = read_to_close(socket)
            assert server.process.wait(30) == 0
            watcher.join(10)
    finally:
        probe.close()
    types = [f["event"] for f in frames]
    assert "full_response" in types, types
    done = frames[types.index("done")]
    assert done["reason"] == "stop"
    answer = frames[types.index("full_response")]["data"]
    assert answer == "".join(f"t{i} " for i in range(150))
    assert frames[-1]["event"] == "error" and "restarting" in frames[-1]["data"]  # after the answer
    assert code == 1001
    assert [e["event"] for e in sse_frames][-2:] == ["full_response", "error"]
    api.http.close()

    server = ServerProcess(config, tmp_path).start()
    try:
        api = Api(server.url)
        saved = history(api, headers, cid)
        assert [m["role"] for m in saved] == ["user", "assistant"] and saved[1]["content"] == answer
        assert history(api, headers, other) == []  # the refused message was not half-started
    finally:
        server.stop()


def test_sigterm_stops_an_answer_that_outlasts_the_grace(database: str, broker: str, upstream: FakeUpstream,
                                                        tmp_path: Path) -> None:
    """Past the grace period the answer is stopped like a user's stop: `done` (cancelled) and
    `full_response` reach the watchers, the partial answer is saved, then sockets close 1001."""
    config, server = start_server(tmp_path, database, broker, upstream, grace=1)
    api = Api(server.url)
    headers, cid = new_chat(api)
    sse_frames: list[dict[str, Any]] = []
    with Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        watcher = watch_sse(api, headers, cid, sse_frames)
        socket.send({"type": "message", "content": "#fake tokens=500 delay_ms=20"})  # ~10 s
        socket.recv_until("message")
        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        frames, code = read_to_close(socket)
        assert server.process.wait(20) == 0
        took = time.monotonic() - began
        watcher.join(10)
    assert took < 8, took  # it did not wait for the whole answer
    types = [f["event"] for f in frames]
    assert frames[types.index("done")]["reason"] == "cancelled"
    partial = frames[types.index("full_response")]["data"]
    assert partial.startswith("t0 t1 ") and len(partial) < len("".join(f"t{i} " for i in range(500)))
    assert code == 1001
    assert "full_response" in [e["event"] for e in sse_frames]
    api.http.close()

    server = ServerProcess(config, tmp_path).start()
    try:
        api = Api(server.url)
        saved = history(api, headers, cid)
        assert [m["role"] for m in saved] == ["user", "assistant"] and saved[1]["content"] == partial
    finally:
        server.stop()
