"""SIGTERM: sockets close with 1001, streams end, a running answer is saved."""
from __future__ import annotations

import signal
import threading
from pathlib import Path

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import iter_frames
from tests.test_chat import history, new_chat
from tests.wsclient import Socket


def test_sigterm_closes_sockets_1001_and_saves_the_answer(database: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database, upstream))
    server = ServerProcess(config, tmp_path).start()
    api = Api(server.url)
    headers, cid = new_chat(api)
    sse_frames: list = []

    def watch() -> None:
        with api.http.stream("GET", f"/api/chat/{cid}/events", headers=headers) as response:
            sse_frames.extend(e for e in iter_frames(response.iter_lines()) if e is not None)

    with Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        watcher = threading.Thread(target=watch)
        watcher.start()
        socket.send({"type": "message", "content": "#fake tokens=500 delay_ms=20"})
        socket.recv_until("message")
        server.process.send_signal(signal.SIGTERM)
        frames = []
        code = None
        try:
            while True:
                frames.append(socket.recv(timeout=10))
        except Exception:
            code = socket.close_code(timeout=1)
        assert server.process.wait(20) == 0
        watcher.join(10)
    assert socket.conn.close_code == 1001 or code == 1001
    assert frames[-1]["event"] == "error" and "restarting" in frames[-1]["data"]
    assert sse_frames and sse_frames[-1]["event"] == "error"
    api.http.close()

    server = ServerProcess(config, tmp_path).start()
    try:
        api = Api(server.url)
        saved = history(api, headers, cid)
        assert [m["role"] for m in saved] == ["user", "assistant"]
        assert saved[1]["content"].startswith("t0 t1 ")
    finally:
        server.stop()
