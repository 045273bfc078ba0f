"""`resync` through the real server (DESIGN.md events): a client resuming from events the
replay buffer no longer holds (here it keeps 8) is told to re-read the history, then gets
what the buffer holds; over the WebSocket's `last_event_id` and `resume` frame and over
SSE's Last-Event-ID; in-process and with Redis."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import iter_frames
from tests.test_chat import chat_events, history, new_chat
from tests.wsclient import Socket


@pytest.fixture
def small_buffer(broker: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[ServerProcess]:
    config = base_config(tmp_path, "sqlite", upstream, broker)
    config["stream"]["replay_events"] = 8
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    yield server
    server.stop()


def test_a_resume_past_the_buffer_is_told_to_resync(small_buffer: ServerProcess) -> None:
    api = Api(small_buffer.url)
    headers, cid = new_chat(api)
    events = chat_events(api, headers, cid, "#fake tokens=20")  # 23 events; the buffer keeps the last 8
    kept = events[-8:]
    early = events[2]["id"]
    with Socket(small_buffer.url, cid, headers, query=f"last_event_id={early}") as socket:
        assert socket.recv()["event"] == "ready"
        resync = socket.recv()
        assert resync == {"event": "resync", "data": "", "id": kept[0]["id"] - 1, "conversation_id": cid}
        assert socket.recv_until("full_response") == kept
        socket.send({"type": "resume", "last_event_id": early})  # the frame, too
        assert socket.recv()["event"] == "resync"
        assert socket.recv_until("full_response") == kept
        socket.send({"type": "resume", "last_event_id": resync["id"]})  # from the resync's id: nothing missing
        assert socket.recv()["event"] != "resync"
    with api.http.stream("GET", f"/api/chat/{cid}/events", headers={**headers, "Last-Event-ID": str(early)}) as response:
        frames = iter_frames(response.iter_lines())
        first = next(f for f in frames if f is not None)
        assert first["event"] == "resync" and first["id"] == kept[0]["id"] - 1
    assert len(history(api, headers, cid)) == 2  # what the client re-reads is all there
