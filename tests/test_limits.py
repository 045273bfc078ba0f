"""What a slow subscriber and a long answer may cost: bounded in bytes, cut off, capped."""
from __future__ import annotations

import socket
import time
from typing import Iterator

import pytest

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.test_chat import chat_events, history, new_chat
from tests.wsclient import Socket

BIG_ANSWER = "#fake tokens=600 size=20000"  # 12 MB: more than every TCP buffer on the way holds


def lazy_sse(server: ServerProcess, headers: dict[str, str], cid: int) -> socket.socket:
    """GET /events on a raw socket that reads the response head and then nothing."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    raw.sendall(f"GET /api/chat/{cid}/events HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}"
                "\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += raw.recv(1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return raw


def generation_ends(server: ServerProcess, headers: dict[str, str], cid: int, within: float) -> bool:
    """Whether a fresh socket's `ready` says nothing is generating any more, within `within`
    seconds. (The saved answer row alone is not the end: done and full_response, 12 MB
    gathered from the replay buffer, are published after it, and only then is the
    conversation free for the next message.)"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with Socket(server.url, cid, headers) as probe:
            if not probe.recv()["generating"]:
                return True
        time.sleep(0.1)
    return False


def drain(raw: socket.socket, timeout: float) -> tuple[int, bool]:
    """Read what is left: how many bytes, and whether the server ended the connection."""
    raw.settimeout(timeout)
    total = 0
    try:
        while chunk := raw.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        return total, True
    except TimeoutError:
        return total, False
    return total, True


def test_an_sse_client_that_stops_reading_is_cut_off(server: ServerProcess, api: Api) -> None:
    """An SSE watcher that never reads is dropped once it falls behind (it was kept for
    good, its events piling up); the answer and its readers carry on."""
    headers, cid = new_chat(api)
    with lazy_sse(server, headers, cid) as raw:
        events = chat_events(api, headers, cid, BIG_ANSWER)  # a reader that keeps up sees it all
        assert events[-1]["event"] == "full_response" and len(events[-1]["data"]) == 600 * 20000, events[-1]
        received, closed = drain(raw, timeout=10)
    assert closed, "the stream of a client that did not read was never ended"
    assert received < 2 * 600 * 20000  # it was cut off, not served the answer and its full_response
    assert len(history(api, headers, cid)) == 2


@pytest.fixture(scope="module")
def capped(database: str, broker: str, upstream: FakeUpstream,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Small caps: 1,000 characters an answer, 2 s a generation."""
    workdir = tmp_path_factory.mktemp("capped")
    config = base_config(workdir, database, upstream, broker)
    config["stream"].update(max_answer_chars=1000, max_generation_seconds=2)
    server = ServerProcess(write_config(workdir / "config.yaml", config), workdir).start()
    client = Api(server.url)
    yield client
    client.http.close()
    server.stop()


def test_an_answer_over_max_answer_chars_is_stopped_there_and_saved(capped: Api) -> None:
    headers, cid = new_chat(capped)
    events = chat_events(capped, headers, cid, "#fake tokens=100 size=50")
    done, full = events[-2], events[-1]
    assert done["event"] == "done" and done["reason"] == "cancelled" and done["limit"] == "size"
    assert full["data"] == "".join(e["data"] for e in events if e["event"] == "message")
    assert len(full["data"]) == 1000
    assert history(capped, headers, cid)[-1]["content"] == full["data"]


def test_an_answer_over_max_generation_seconds_says_so(capped: Api) -> None:
    headers, cid = new_chat(capped)
    events = chat_events(capped, headers, cid, "#fake tokens=100 delay_ms=100")
    assert events[-2]["event"] == "done" and events[-2]["reason"] == "cancelled" and events[-2]["limit"] == "time"
    normal = chat_events(capped, headers, cid, "#fake tokens=2")
    assert normal[-2]["reason"] == "stop" and "limit" not in normal[-2]


@pytest.fixture(scope="module")
def byte_bound(broker: str, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A subscriber queue bound by bytes only: 100,000 events would hold a whole 12 MB answer."""
    workdir = tmp_path_factory.mktemp("byte-bound")
    config = base_config(workdir, "sqlite", upstream, broker)
    config["stream"].update(subscriber_queue=100_000, subscriber_queue_bytes=131_072)
    server = ServerProcess(write_config(workdir / "config.yaml", config), workdir).start()
    yield server
    server.stop()


def test_a_socket_that_stops_reading_is_cut_off_by_bytes(byte_bound: ServerProcess) -> None:
    api = Api(byte_bound.url)
    headers, cid = new_chat(api)
    with Socket(byte_bound.url, cid, headers) as lazy:
        assert lazy.recv()["event"] == "ready"
        lazy.send({"type": "message", "content": BIG_ANSWER})
        assert generation_ends(byte_bound, headers, cid, within=30)  # regardless of the lazy reader
        assert len(history(api, headers, cid)) == 2
        assert lazy.close_code(timeout=30) == 1008
    with lazy_sse(byte_bound, headers, cid) as raw:
        assert chat_events(api, headers, cid, BIG_ANSWER)[-1]["event"] == "full_response"
        _, closed = drain(raw, timeout=10)
    assert closed
