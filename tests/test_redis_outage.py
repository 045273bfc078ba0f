"""Redis going away at runtime: REST goes on, live streams end with an error, and the
service recovers when Redis comes back — with real processes."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.backends import PrivateRedis
from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import parse_stream
from tests.test_chat import assert_complete, chat, chat_events, history, new_chat
from tests.test_persistence import assert_resumes_into, resumed_from, watch_answer_until
from tests.wsclient import Socket


class OnPrivateRedis:
    """A server on a redis-server of the test's own, which the test may stop or kill."""

    def __init__(self, database: str, upstream: FakeUpstream, tmp_path: Path) -> None:
        self.redis = PrivateRedis()
        config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database, upstream, self.redis.url))
        self.server = ServerProcess(config, tmp_path).start()
        self.api = Api(self.server.url)

    def restart_redis(self) -> None:
        """Redis back on the same port, empty."""
        self.redis = PrivateRedis(port=self.redis.port)

    def chat_once_redis_is_back(self, headers: dict[str, str], cid: int, message: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 15
        while (response := chat(self.api, headers, cid, message)).status_code != 200:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.3)
        return parse_stream(response.content)

    def stop(self) -> None:
        self.server.stop()
        self.redis.stop()


@pytest.fixture
def on_private_redis(database: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[OnPrivateRedis]:
    deployment = OnPrivateRedis(database, upstream, tmp_path)
    yield deployment
    deployment.stop()


def test_redis_stop_and_return(on_private_redis: OnPrivateRedis) -> None:
    server, api = on_private_redis.server, on_private_redis.api
    headers, cid = new_chat(api)
    assert_complete(chat_events(api, headers, cid, "#fake tokens=2"), cid)
    assert_complete(chat_events(api, headers, cid, "#fake tokens=2"), cid)
    with Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        on_private_redis.redis.stop()
        error = socket.recv(timeout=10)
        assert error["event"] == "error" and "unavailable" in error["data"]
        assert socket.close_code() == 1013

    # REST that needs only the database carries on; live features say why they cannot.
    assert len(history(api, headers, cid)) == 4
    assert api.http.get("/api/conversations/list", headers=headers).status_code == 200
    assert api.http.get("/readyz").status_code == 503
    refused = chat(api, headers, cid, "#fake tokens=1")
    assert refused.status_code == 503 and "error" in refused.json()
    assert len(history(api, headers, cid)) == 4  # nothing half-saved

    on_private_redis.restart_redis()
    # The first answer after Redis returns streams whole: no stale pooled connection
    # to the old Redis breaks it half-way.
    assert_complete(on_private_redis.chat_once_redis_is_back(headers, cid, "#fake tokens=3"), cid)
    assert api.http.get("/readyz").status_code == 200
    with Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=2"})
        assert_complete(socket.recv_until("full_response"), cid)


def test_event_ids_stay_above_what_clients_saw_after_redis_is_lost(on_private_redis: OnPrivateRedis) -> None:
    """Redis killed mid-answer and back empty: the next turn's ids are above every id a
    client saw (the counter comes back from the SQL ceiling, not from 0 or a stale mark),
    so a client resuming from its last id gets the whole turn."""
    server, api = on_private_redis.server, on_private_redis.api
    headers, cid = new_chat(api)
    assert chat_events(api, headers, cid, "#fake tokens=3")[-1]["event"] == "full_response"
    highest = watch_answer_until(server, headers, cid, seen=60)
    on_private_redis.redis.process.kill()
    on_private_redis.redis.process.wait(10)
    on_private_redis.restart_redis()
    events = on_private_redis.chat_once_redis_is_back(headers, cid, "#fake tokens=3")
    assert events[-1]["event"] == "full_response"
    assert events[0]["id"] > highest, (events[0]["id"], highest)
    # The interrupted answer may go on once Redis is back (and end before this turn starts).
    assert_resumes_into(resumed_from(api, headers, cid, highest, events[-1]["id"]), highest, events)
