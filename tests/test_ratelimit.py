"""Rate limits, in-process and in Redis: 429 with Retry-After over HTTP; an error event,
then close 1008, over WebSocket. With Redis, every process counts against one limit."""
from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.backends import redis_url
from tests.conftest import PASSWORD, Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.test_chat import chat
from tests.wsclient import Socket

LIMITS = {"login_attempts_per_minute_per_username": 3, "login_attempts_per_minute_per_address": 8,
          "registrations_per_hour_per_address": 4, "messages_per_minute_per_user": 2,
          "ws_frames_per_10_seconds": 10, "websockets_per_user": 3}


@pytest.fixture
def limited(broker: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[Path, ServerProcess]]:
    config = base_config(tmp_path, "sqlite", upstream, broker)
    config["limits"] = LIMITS
    path = write_config(tmp_path / "config.yaml", config)
    server = ServerProcess(path, tmp_path).start()
    yield path, server
    server.stop()


def register(api: Api) -> tuple[str, int]:
    name = f"rl_{uuid.uuid4().hex[:8]}"
    response = api.http.post("/api/users/register", json={"username": name, "password": PASSWORD})
    return name, response.status_code


def assert_limited(response, fragment: str) -> None:  # noqa: ANN001
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "rate_limited" and fragment in response.json()["error"]
    assert 1 <= int(response.headers["retry-after"]) <= 3600


def test_registrations_and_logins_are_limited(limited: tuple[Path, ServerProcess]) -> None:
    _, server = limited
    api = Api(server.url)
    names = [register(api) for _ in range(4)]
    assert [status for _, status in names] == [201] * 4
    refused = api.http.post("/api/users/register", json={"username": "one_more", "password": PASSWORD})
    assert_limited(refused, "registrations")
    # Per username: three attempts a minute, right or wrong, then 429 even for the right one.
    alice = names[0][0]
    for _ in range(3):
        assert api.http.post("/api/users/login", json={"username": alice, "password": "wrong password"}).status_code == 401
    assert_limited(api.http.post("/api/users/login", json={"username": alice, "password": PASSWORD}), "this user")
    # Another user is not affected... until the address has used its eight attempts.
    for name, _ in names[1:]:
        assert api.http.post("/api/users/login", json={"username": name, "password": PASSWORD}).status_code == 200
    assert api.http.post("/api/users/login", json={"username": names[1][0], "password": PASSWORD}).status_code == 200
    assert_limited(api.http.post("/api/users/login", json={"username": names[2][0], "password": PASSWORD}),
                   "this address")
    api.http.close()


def test_messages_are_limited_per_user_over_http_and_websocket(limited: tuple[Path, ServerProcess]) -> None:
    path, server = limited
    api = Api(server.url)
    headers = api.new_user()
    cid = api.create_conversation(headers, model="fake-model")["conversation_id"]
    assert chat(api, headers, cid, "#fake tokens=1").status_code == 200
    with Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=1"})
        socket.recv_until("full_response")
        socket.send({"type": "regenerate"})  # the third in a minute, whatever its kind
        error = socket.recv()
        assert error["event"] == "error" and error["code"] == "rate_limited"
        assert socket.close_code() == 1008
    assert_limited(chat(api, headers, cid, "#fake tokens=1"), "messages")
    assert_limited(api.http.post(f"/api/chat/{cid}/regenerate", headers=headers), "messages")
    # Someone else chats on.
    other = api.new_user()
    theirs = api.create_conversation(other, model="fake-model")["conversation_id"]
    assert chat(api, other, theirs, "#fake tokens=1").status_code == 200
    api.http.close()


def test_a_frame_flood_closes_the_socket(limited: tuple[Path, ServerProcess]) -> None:
    _, server = limited
    api = Api(server.url)
    headers = api.new_user()
    cid = api.create_conversation(headers)["conversation_id"]
    with Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        for _ in range(11):
            socket.send({"type": "ping"})
        replies = [socket.recv() for _ in range(11)]
        assert [r["event"] for r in replies] == ["pong"] * 10 + ["error"]
        assert replies[-1]["code"] == "rate_limited"
        assert socket.close_code() == 1008
    with Socket(server.url, cid, headers) as fresh:  # a new socket starts afresh
        assert fresh.recv()["event"] == "ready"
        fresh.send({"type": "ping"})
        assert fresh.recv()["event"] == "pong"
    api.http.close()


def test_with_redis_every_process_counts_against_one_limit(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(tmp_path, "sqlite", upstream, redis_url())
    config["limits"] = LIMITS
    path = write_config(tmp_path / "config.yaml", config)
    a = ServerProcess(path, tmp_path).start()
    b = ServerProcess(path, tmp_path).start()
    try:
        api_a, api_b = Api(a.url), Api(b.url)
        headers = api_a.new_user()
        cid = api_a.create_conversation(headers, model="fake-model")["conversation_id"]
        assert chat(api_a, headers, cid, "#fake tokens=1").status_code == 200
        assert chat(api_b, headers, cid, "#fake tokens=1").status_code == 200
        assert_limited(chat(api_a, headers, cid, "#fake tokens=1"), "messages")
        assert_limited(chat(api_b, headers, cid, "#fake tokens=1"), "messages")
    finally:
        a.stop()
        b.stop()


def open_sockets(url: str, cid: int, headers: dict[str, str], n: int) -> list[Socket]:
    sockets = [Socket(url, cid, headers) for _ in range(n)]
    for socket in sockets:
        assert socket.recv()["event"] == "ready"
    return sockets


def assert_refused(url: str, cid: int, headers: dict[str, str]) -> None:
    with Socket(url, cid, headers) as extra:
        error = extra.recv()
        assert error["event"] == "error" and error["code"] == "rate_limited", error
        assert "open sockets" in error["data"] and error["conversation_id"] == cid
        assert extra.close_code() == 1008


def eventually_ready(url: str, cid: int, headers: dict[str, str], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        with Socket(url, cid, headers) as socket:
            first = socket.recv()
            if first["event"] == "ready":
                return
        assert time.monotonic() < deadline, f"still refused: {first}"
        time.sleep(0.2)


def test_open_sockets_are_limited_per_user(limited: tuple[Path, ServerProcess]) -> None:
    _, server = limited
    api = Api(server.url)
    headers = api.new_user()
    cid = api.create_conversation(headers)["conversation_id"]
    sockets = open_sockets(server.url, cid, headers, 3)
    assert_refused(server.url, cid, headers)
    other = api.new_user()  # another user is not affected
    open_sockets(server.url, api.create_conversation(other)["conversation_id"], other, 1)[0].close()
    sockets.pop().close()  # a seat freed is a seat to take
    eventually_ready(server.url, cid, headers, within=5)
    for socket in sockets:
        socket.send({"type": "ping"})  # the held sockets were never disturbed
        assert socket.recv()["event"] == "pong"
        socket.close()
    api.http.close()


def test_with_redis_sockets_count_over_every_process_and_dead_ones_are_freed(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(tmp_path, "sqlite", upstream, redis_url())
    config["limits"] = {**LIMITS, "websocket_seat_lease_seconds": 1.5}
    path = write_config(tmp_path / "config.yaml", config)
    a = ServerProcess(path, tmp_path).start()
    b = ServerProcess(path, tmp_path).start()
    try:
        api = Api(a.url)
        headers = api.new_user()
        cid = api.create_conversation(headers)["conversation_id"]
        held = open_sockets(a.url, cid, headers, 2) + open_sockets(b.url, cid, headers, 1)
        time.sleep(4)  # well past one lease: the seats are renewed, not lapsed
        assert_refused(b.url, cid, headers)
        assert_refused(a.url, cid, headers)
        a.process.send_signal(signal.SIGKILL)  # two seats die with it, without a word to Redis
        a.process.wait()
        started = time.monotonic()
        eventually_ready(b.url, cid, headers, within=6)
        assert time.monotonic() - started > 0.3  # freed by the lease running out, not at once
        for socket in held:
            socket.close()
        api.http.close()
    finally:
        a.stop()
        b.stop()
