"""Redis going away at runtime: REST goes on, live streams end with an error, and the
service recovers when Redis comes back — with real processes."""
from __future__ import annotations

import time
from pathlib import Path

from tests.backends import PrivateRedis
from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import parse_stream
from tests.test_chat import assert_complete, chat, chat_events, history, new_chat
from tests.wsclient import Socket


def test_redis_stop_and_return(database: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    redis_server = PrivateRedis()
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database, upstream, redis_server.url))
    server = ServerProcess(config, tmp_path).start()
    try:
        api = Api(server.url)
        headers, cid = new_chat(api)
        assert_complete(chat_events(api, headers, cid, "#fake tokens=2"), cid)
        assert_complete(chat_events(api, headers, cid, "#fake tokens=2"), cid)
        with Socket(server.url, cid, headers) as socket:
            assert socket.recv()["event"] == "ready"
            redis_server.stop()
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

        redis_server = PrivateRedis(port=redis_server.port)
        deadline = time.monotonic() + 15
        while (response := chat(api, headers, cid, "#fake tokens=3")).status_code != 200:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.3)
        # The first answer after Redis returns streams whole: no stale pooled connection
        # to the old Redis breaks it half-way.
        assert_complete(parse_stream(response.content), cid)
        assert api.http.get("/readyz").status_code == 200
        with Socket(server.url, cid, headers) as socket:
            assert socket.recv()["event"] == "ready"
            socket.send({"type": "message", "content": "#fake tokens=2"})
            assert_complete(socket.recv_until("full_response"), cid)
    finally:
        server.stop()
        redis_server.stop()
