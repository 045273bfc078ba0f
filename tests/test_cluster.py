"""Two real server processes sharing Redis (one, or a Redis Cluster with sharded pub/sub)
and the database: events, stop and lock cross processes; a killed generating process ends
its stream with an error."""
from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis

from tests.backends import PrivateRedis, redis_url
from tests.conftest import Api, base_config, cluster_broker
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.test_chat import assert_complete, chat, chat_events, history, new_chat
from tests.wsclient import Socket


def start_pair(database: str, upstream: FakeUpstream, workdir: Path, redis: str) -> tuple[ServerProcess, ServerProcess]:
    config = write_config(workdir / "config.yaml", base_config(workdir, database, upstream, redis))
    return ServerProcess(config, workdir).start(), ServerProcess(config, workdir).start()


@pytest.fixture(params=["redis", "cluster"])
def shared(request: pytest.FixtureRequest) -> str:
    """What the two processes share: one Redis, or the session's Redis Cluster."""
    return redis_url() if request.param == "redis" else cluster_broker(request.getfixturevalue("redis_cluster"))


@pytest.fixture
def pair(database: str, upstream: FakeUpstream, tmp_path: Path,
         shared: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a, b = start_pair(database, upstream, tmp_path, shared)
    yield a, b
    a.stop(), b.stop()


def ready(socket: Socket) -> dict:
    frame = socket.recv()
    assert frame["event"] == "ready"
    return frame


def test_generation_on_b_reaches_socket_on_a(pair, upstream: FakeUpstream) -> None:
    """A socket on A receives, in order and complete, what B generates — started by WebSocket or by POST."""
    a, b = pair
    api_a, api_b = Api(a.url), Api(b.url)
    headers, cid = new_chat(api_a)
    with Socket(a.url, cid, headers) as on_a, Socket(b.url, cid, headers) as on_b:
        ready(on_a), ready(on_b)
        on_b.send({"type": "message", "content": "#fake tokens=30 delay_ms=5"})
        from_b = on_b.recv_until("full_response")
        assert on_a.recv_until("full_response") == from_b
        assert_complete(from_b, cid)
        sse = chat_events(api_b, headers, cid, "#fake tokens=10")
        assert on_a.recv_until("full_response") == sse
    assert len(history(api_a, headers, cid)) == 4


def test_regenerate_and_edit_on_b_reach_socket_on_a(pair, upstream: FakeUpstream) -> None:
    """The truncate and the new answer reach every process; a resume on A replays no old turn."""
    a, b = pair
    api_a, api_b = Api(a.url), Api(b.url)
    headers, cid = new_chat(api_a)
    chat_events(api_a, headers, cid, "#fake tokens=3")
    with Socket(a.url, cid, headers) as on_a, Socket(b.url, cid, headers) as on_b:
        ready(on_a), ready(on_b)
        on_b.send({"type": "regenerate"})
        from_b = on_b.recv_until("full_response")
        assert on_a.recv_until("full_response") == from_b
        assert from_b[0]["event"] == "truncate"
        first = history(api_a, headers, cid)[0]["message_id"]
        on_b.send({"type": "message", "content": "#fake tokens=2", "edit_message_id": first})
        edited = on_b.recv_until("full_response")
        assert on_a.recv_until("full_response") == edited
        assert [e["event"] for e in edited[:2]] == ["truncate", "user_message"]
    with Socket(a.url, cid, headers, query="last_event_id=0") as resumed:
        ready(resumed)
        assert resumed.recv_until("full_response") == edited
    assert [m["content"] for m in history(api_b, headers, cid)] == ["#fake tokens=2", "t0 t1 "]


def test_stop_from_a_cancels_b(pair, upstream: FakeUpstream) -> None:
    """A stop asked of A closes the upstream request that B is streaming."""
    a, b = pair
    api_a = Api(a.url)
    headers, cid = new_chat(api_a)
    message = f"#fake tokens=300 delay_ms=20\n{uuid.uuid4()}"
    with Socket(b.url, cid, headers) as on_b:
        ready(on_b)
        on_b.send({"type": "message", "content": message})
        record = upstream.request_for(message)
        on_b.recv_until("message")
        response = api_a.http.post(f"/api/chat/{cid}/stop", headers=headers)
        assert response.json()["stopped"] is True
        events = on_b.recv_until("full_response")
    assert [e for e in events if e["event"] == "done"][0]["reason"] == "cancelled"
    assert upstream.wait_for(lambda: record.closed_early, 5)


def test_lock_holds_across_processes(pair) -> None:
    """While B generates, A refuses a second generation by POST (409) and by WebSocket (error)."""
    a, b = pair
    api_a = Api(a.url)
    headers, cid = new_chat(api_a)
    with Socket(b.url, cid, headers) as on_b, Socket(a.url, cid, headers) as on_a:
        ready(on_b), ready(on_a)
        on_b.send({"type": "message", "content": "#fake tokens=100 delay_ms=20"})
        on_b.recv_until("message")
        assert chat(api_a, headers, cid, "#fake tokens=1").status_code == 409
        on_a.send({"type": "message", "content": "#fake tokens=1"})
        assert on_a.recv_until("error")[-1]["code"] == "conflict"
        on_b.send({"type": "stop"})
        on_b.recv_until("full_response")


def test_resume_on_a_after_disconnect(pair) -> None:
    """A socket that drops mid-answer and reconnects to A with its last id misses nothing."""
    a, b = pair
    api_a = Api(a.url)
    headers, cid = new_chat(api_a)
    with Socket(b.url, cid, headers) as on_b:
        ready(on_b)
        with Socket(a.url, cid, headers) as first:
            ready(first)
            on_b.send({"type": "message", "content": "#fake tokens=40 delay_ms=20"})
            seen = first.recv_until("message") + [first.recv(), first.recv()]
        time.sleep(0.2)  # events go on while nobody on A listens
        with Socket(a.url, cid, headers, query=f"last_event_id={seen[-1]['id']}") as again:
            ready(again)
            rest = again.recv_until("full_response")
        everything = on_b.recv_until("full_response")
    assert seen + rest == everything


def test_killed_generating_process_ends_stream_with_error(database: str, upstream: FakeUpstream, tmp_path: Path,
                                                          shared: str) -> None:
    """kill -9 of the process running a generation: sockets elsewhere get `error` within
    seconds (lock expiry 3 s here), and the conversation can be used again."""
    a, b = start_pair(database, upstream, tmp_path, shared)
    try:
        api_a = Api(a.url)
        headers, cid = new_chat(api_a)
        with Socket(a.url, cid, headers) as on_a, Socket(b.url, cid, headers) as on_b:
            ready(on_a), ready(on_b)
            on_b.send({"type": "message", "content": "#fake tokens=1000 delay_ms=20"})
            on_a.recv_until("message")
            b.process.send_signal(signal.SIGKILL)
            b.process.wait(5)
            started = time.monotonic()
            events = on_a.recv_until("error", timeout=15)
            assert time.monotonic() - started < 10
        assert "stopped" in events[-1]["data"]
        deadline = time.monotonic() + 10
        while (response := chat(api_a, headers, cid, "#fake tokens=2")).status_code == 409:
            assert time.monotonic() < deadline, "the lock never expired"
            time.sleep(0.2)
        assert response.status_code == 200
    finally:
        a.stop(), b.stop()


def test_history_survives_flushall(database: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Redis only caches: after FLUSHALL (on a Redis of the test's own) history is intact,
    chat works, and event ids keep increasing."""
    private = PrivateRedis()
    server = None
    try:
        config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database, upstream, private.url))
        server = ServerProcess(config, tmp_path).start()
        api = Api(server.url)
        headers, cid = new_chat(api)
        first = chat_events(api, headers, cid, "#fake tokens=3")
        before = history(api, headers, cid)
        redis.Redis.from_url(private.url).flushall()
        assert history(api, headers, cid) == before
        second = chat_events(api, headers, cid, "#fake tokens=2")
        assert second[0]["id"] > first[-1]["id"]
        assert len(history(api, headers, cid)) == 4
    finally:
        if server is not None:
            server.stop()
        private.stop()
