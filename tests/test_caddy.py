"""The deployment of issue 6, end to end: the repo's Caddyfile run by a real Caddy in front
of two real app processes that share the real Redis and a PostgreSQL database of their own."""
from __future__ import annotations

import queue
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.backends import create_postgres_database, drop_postgres_database, redis_url
from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import Caddy, ServerProcess, write_config
from tests.sse import iter_frames
from tests.test_chat import assert_complete, new_chat
from tests.wsclient import Socket

REPO = Path(__file__).resolve().parent.parent


class Deployment:
    def __init__(self, apps: list[ServerProcess], caddy: Caddy) -> None:
        self.apps = apps
        self.caddy = caddy

    def holding(self, gauge: str) -> list[float]:
        """A gauge read from each app process directly (the proxy hides /metrics)."""
        values = []
        for app in self.apps:
            try:
                text = httpx.get(app.url + "/metrics", timeout=5).text
            except httpx.HTTPError:
                values.append(float("nan"))
                continue
            line = next(line for line in text.splitlines() if line.startswith(gauge + " "))
            values.append(float(line.split()[1]))
        return values


@pytest.fixture
def deployment(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Deployment]:
    database = create_postgres_database()
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database, upstream, redis_url()))
    apps = [ServerProcess(config, tmp_path).start() for _ in range(2)]
    try:
        caddy = Caddy(tmp_path, [f"127.0.0.1:{app.port}" for app in apps])
        try:
            yield Deployment(apps, caddy)
        finally:
            caddy.stop()
    finally:
        for app in apps:
            app.stop()
        drop_postgres_database(database)


class Watcher:
    """An SSE client in a thread of its own; events arrive on a queue."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()
        self.opened = threading.Event()
        self.client = httpx.Client(timeout=30)
        self.thread = threading.Thread(target=self._read, args=(url, headers), daemon=True)
        self.thread.start()
        assert self.opened.wait(10), "the event stream did not open"

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            # Accept-Encoding as browsers send it: the proxy must still not compress the stream.
            with self.client.stream("GET", url, headers={**headers, "Accept-Encoding": "gzip, br, zstd"}) as response:
                assert response.status_code == 200
                assert "content-encoding" not in response.headers
                self.opened.set()
                for frame in iter_frames(response.iter_lines()):
                    if frame is not None:
                        self.events.put(frame)
            self.events.put(None)
        except BaseException as exc:  # handed to the test
            self.opened.set()
            self.events.put(exc)

    def next(self, timeout: float = 15) -> dict[str, Any] | None:
        item = self.events.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def until(self, event: str) -> list[dict[str, Any]]:
        seen = []
        while True:
            frame = self.next()
            assert frame is not None, f"stream ended before {event}: {seen}"
            seen.append(frame)
            if frame["event"] == event:
                return seen

    def close(self) -> None:
        self.client.close()


def place(deployment: Deployment, opener: Any, gauge: str, index: int) -> Any:
    """Open connections through the proxy until one lands on app `index`; close the others."""
    extra = []
    for _ in range(10):
        before = deployment.holding(gauge)
        connection = opener()
        after = deployment.holding(gauge)
        if after[index] > before[index]:
            for other in extra:
                other.close()
            return connection
        extra.append(connection)
    raise AssertionError(f"no {gauge} connection reached app {index}: {deployment.caddy.log()}")


def open_socket(url: str, cid: int, headers: dict[str, str], query: str = "") -> Socket:
    socket = Socket(url, cid, headers, query=query, max_queue=None)
    assert socket.recv()["event"] == "ready"
    return socket


def test_accounts_page_and_metrics_through_the_proxy(deployment: Deployment) -> None:
    api = Api(deployment.caddy.url)
    headers = api.new_user()  # register and log in through Caddy
    assert api.http.get("/api/users/me", headers=headers).status_code == 200
    page = api.http.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    script = api.http.get("/static/app.js", headers={"Accept-Encoding": "gzip"})
    assert script.status_code == 200 and script.text == (REPO / "static" / "app.js").read_text()
    assert script.headers["content-encoding"] == "gzip"  # compressed by Caddy, served from disk
    assert api.http.get("/metrics").status_code == 404  # not for the internet
    for app in deployment.apps:
        assert httpx.get(app.url + "/metrics").status_code == 200
    api.http.close()


def test_socket_and_event_stream_on_different_processes_both_get_the_stream(deployment: Deployment) -> None:
    url = deployment.caddy.url
    api = Api(url)
    headers, cid = new_chat(api)
    socket = place(deployment, lambda: open_socket(url, cid, headers), "realtime_llm_open_websockets", 0)
    watcher = place(deployment, lambda: Watcher(f"{url}/api/chat/{cid}/events", headers),
                    "realtime_llm_open_sse_streams", 1)
    try:
        socket.send({"type": "message", "content": "#fake tokens=60 delay_ms=25"})
        first = watcher.until("message")
        # The first delta came through while the answer was still being generated: neither
        # Caddy's buffering nor its compression held the stream back.
        assert sum(deployment.holding("realtime_llm_running_generations")) == 1
        streamed = first + watcher.until("full_response")
        assert_complete(streamed, cid)
        from_socket = socket.recv_until("full_response")
        assert_complete(from_socket, cid)
        assert streamed[-1]["data"] == from_socket[-1]["data"] == "".join(f"t{i} " for i in range(60))
    finally:
        socket.close()
        watcher.close()
        api.http.close()


def test_killing_a_process_mid_stream_its_clients_resume_on_the_other(deployment: Deployment) -> None:
    url = deployment.caddy.url
    api = Api(url)
    headers, cid = new_chat(api)
    survivor = place(deployment, lambda: open_socket(url, cid, headers), "realtime_llm_open_websockets", 1)
    socket = place(deployment, lambda: open_socket(url, cid, headers), "realtime_llm_open_websockets", 0)
    watcher = place(deployment, lambda: Watcher(f"{url}/api/chat/{cid}/events", headers),
                    "realtime_llm_open_sse_streams", 0)
    try:
        # The generation runs in the surviving process (it started there); app 0 is killed.
        survivor.send({"type": "message", "content": "#fake tokens=120 delay_ms=25"})
        via_socket = socket.recv_until("message")
        via_sse = watcher.until("message")
        while len(via_socket) < 10:
            via_socket.append(socket.recv())
        deployment.apps[0].process.send_signal(signal.SIGKILL)
        deployment.apps[0].process.wait(10)
        # Read what was in flight; then the connection is gone.
        with pytest.raises((ConnectionClosed, TimeoutError, OSError)):
            while True:
                via_socket.append(socket.recv(timeout=10))
        while True:
            frame = watcher.next(timeout=10)
            if frame is None:
                break
            via_sse.append(frame)
        # Both reconnect through the proxy, which can only reach app 1 now, and resume.
        again = open_socket(url, cid, headers, query=f"last_event_id={via_socket[-1]['id']}")
        via_socket += again.recv_until("full_response")
        again.close()
        resumed = Watcher(f"{url}/api/chat/{cid}/events", {**headers, "Last-Event-ID": str(via_sse[-1]["id"])})
        via_sse += resumed.until("full_response")
        resumed.close()
        answer = "".join(f"t{i} " for i in range(120))
        for events in (via_socket, via_sse, survivor.recv_until("full_response")):
            assert_complete(events, cid)
            assert events[-1]["data"] == answer
    finally:
        for closable in (survivor, socket, watcher):
            closable.close()
        api.http.close()
