"""A stream ends when the right to watch it ends: logout of the token it was opened with
(in whichever process the logout lands) or that token's expiry — SSE and WebSocket alike."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import iter_frames
from tests.test_chat import history
from tests.wsclient import Socket


@pytest.fixture
def processes(database: str, broker: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two processes sharing the database and Redis; with the in-process broker, one."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database, upstream, broker))
    started = [ServerProcess(config, tmp_path).start()]
    if broker != "memory":
        started.append(ServerProcess(config, tmp_path).start())
    yield started
    for process in started:
        process.stop()


class Watcher:
    """An SSE stream read on a thread: its events, and when it ended."""

    def __init__(self, url: str, method: str, path: str, headers: dict[str, str], body: Any = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(url, method, path, headers, body), daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    def _read(self, url: str, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            with client.stream(method, path, headers=headers, json=body) as response:
                assert response.status_code == 200
                self.started.set()
                for event in iter_frames(response.iter_lines()):
                    if event is not None:
                        self.events.append(event)
        self.ended.set()


def test_logout_ends_the_streams_of_that_token_in_every_process(processes: list[ServerProcess]) -> None:
    """Streams and sockets opened with token T, on another process than the logout, end
    within seconds with a message; those of another token of the same user go on; the
    answer itself is still produced and saved."""
    first, last = processes[0], processes[-1]
    api = Api(first.url)
    username = api.register()
    logged_out = {"Authorization": f"Bearer {api.login(username)}"}
    staying = {"Authorization": f"Bearer {api.login(username)}"}
    cid = api.create_conversation(staying, model="fake-model")["conversation_id"]

    watcher = Watcher(last.url, "GET", f"/api/chat/{cid}/events", logged_out)
    asking = Watcher(last.url, "POST", f"/api/chat/{cid}", logged_out,
                     {"message": f"#fake tokens=40 delay_ms=100\n{uuid.uuid4()}"})
    with Socket(last.url, cid, logged_out) as doomed, Socket(last.url, cid, staying) as kept:
        assert doomed.recv()["event"] == "ready" and kept.recv()["event"] == "ready"
        assert doomed.recv()["event"] in ("user_message", "message")  # the answer is under way
        assert api.http.post("/api/users/logout", headers=logged_out).status_code == 200
        began = time.monotonic()
        frames = []
        while (frame := doomed.recv(timeout=5))["event"] != "error":
            frames.append(frame)
        assert "session ended" in frame["data"] and frame["code"] == "stream_ended"
        assert doomed.close_code(timeout=5) == 4401
        assert time.monotonic() - began < 4
        for stream in (watcher, asking):
            assert stream.ended.wait(5)
            assert stream.events[-1]["event"] == "error" and "session ended" in stream.events[-1]["data"]
            assert "id" not in stream.events[-1]  # a local error: the stream's last event id stays valid
        assert not any(e["event"] == "full_response" for e in asking.events)  # it ended before the answer
        kept_events = kept.recv_until("full_response", timeout=30)  # the other token's socket saw it all
    assert len(history(api, staying, cid)) == 2  # the generation belonged to no connection: saved
    assert kept_events[-1]["event"] == "full_response"
    assert api.http.get(f"/api/chat/{cid}/events", headers=logged_out).status_code == 401


def test_a_socket_and_a_stream_end_when_their_token_expires(database: str, tmp_path: Path) -> None:
    """A token that expires while a stream is open ends it, without any command."""
    config = base_config(tmp_path, database)
    config["jwt"]["ttl_seconds"] = 3
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    try:
        api = Api(server.url)
        headers = api.new_user()
        issued = time.monotonic()
        cid = api.create_conversation(headers)["conversation_id"]
        watcher = Watcher(server.url, "GET", f"/api/chat/{cid}/events", headers)
        with Socket(server.url, cid, headers) as socket:
            assert socket.recv()["event"] == "ready"
            ended = socket.recv(timeout=8)
            assert ended["event"] == "error" and "session ended" in ended["data"]
            assert socket.close_code(timeout=5) == 4401
            assert time.monotonic() - issued >= 2  # not before the token's expiry (whole seconds)
        assert watcher.ended.wait(5)
        assert "session ended" in watcher.events[-1]["data"]
    finally:
        server.stop()
