"""Redis under strain: a small connection pool shared by many streams makes calls wait,
and no live answer is declared dead or stopped because of it."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from tests.backends import redis_url
from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import parse_stream
from tests.test_chat import assert_complete, new_chat

STREAMS = 40


def test_a_busy_pool_waits_and_every_answer_completes(database: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    """40 streams at once on 5 Redis connections (one of them the pub/sub listener), with a
    1 s lock: calls queue for a connection instead of failing, lock renewals keep up, and
    every answer ends with its full_response (one in 300 was lost to MaxConnectionsError)."""
    config = base_config(tmp_path, database, upstream, redis_url())
    config["redis"]["max_connections"] = 5
    config["stream"]["lock_ttl_seconds"] = 1
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    try:
        api = Api(server.url)
        chats = [new_chat(api) for _ in range(STREAMS)]
        results: list[Any] = [None] * STREAMS
        start = threading.Barrier(STREAMS)

        def run(i: int) -> None:
            headers, cid = chats[i]
            with httpx.Client(base_url=server.url, timeout=60) as client:
                start.wait()
                response = client.post(f"/api/chat/{cid}", json={"message": "#fake tokens=40 delay_ms=40"},
                                       headers=headers)
                results[i] = (response.status_code, parse_stream(response.content) if response.status_code == 200
                              else response.text)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        for (status, events), (_, cid) in zip(results, chats, strict=True):
            assert status == 200, events
            assert_complete(events, cid)
        assert "MaxConnectionsError" not in server.log() and "lost the lock" not in server.log()
    finally:
        server.stop()
