"""GET /metrics: Prometheus text with requests, open sockets and streams, running
generations, events published, upstream errors and latency — each moving when it should."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.test_chat import chat, new_chat
from tests.wsclient import Socket


def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = api.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape_until(api: Api, condition: Any, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    while not condition(samples := scrape(api)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_route_template_not_raw_path(api: Api) -> None:
    headers, cid = new_chat(api)
    before = scrape(api)
    for _ in range(3):
        assert api.http.get(f"/api/conversations/history/{cid}", headers=headers).status_code == 200
    assert api.http.get("/api/conversations/history/999999999", headers=headers).status_code == 404
    assert api.http.get("/no/such/path").status_code == 404
    after = scrape(api)
    route = "/api/conversations/history/{id}"
    name = "realtime_llm_http_requests_total"
    assert value(after, name, method="GET", route=route, status="200") - value(before, name, method="GET", route=route, status="200") == 3
    assert value(after, name, method="GET", route=route, status="404") - value(before, name, method="GET", route=route, status="404") == 1
    assert value(after, name, method="GET", route="unmatched", status="404") >= 1
    assert not any(str(cid) in dict(labels).get("route", "") for (_, labels) in after)
    assert value(after, "realtime_llm_http_request_duration_seconds_count", method="GET", route=route) >= 4


def test_generation_metrics_follow_a_chat(api: Api) -> None:
    headers, cid = new_chat(api)
    before = scrape(api)
    chat(api, headers, cid, "#fake tokens=5")
    # The generation is counted as it ends, a moment after its last event went out.
    after = scrape_until(api, lambda s: value(s, "realtime_llm_generations_total", outcome="stop")
                         > value(before, "realtime_llm_generations_total", outcome="stop"))
    published = "realtime_llm_events_published_total"
    assert value(after, published, type="message") - value(before, published, type="message") >= 1
    for kind in ("user_message", "done", "full_response"):
        assert value(after, published, type=kind) - value(before, published, type=kind) == 1
    generations = "realtime_llm_generations_total"
    assert value(after, generations, outcome="stop") - value(before, generations, outcome="stop") == 1
    first = "realtime_llm_upstream_first_token_seconds_count"
    assert value(after, first, provider="fake") - value(before, first, provider="fake") == 1


def test_upstream_errors_are_counted_by_provider(api: Api) -> None:
    headers, cid = new_chat(api, model="fake-model")
    before = scrape(api)
    refused = api.http.post(f"/api/chat/{cid}", json={"message": "#fake status=500"}, headers=headers)
    assert refused.status_code == 502
    after = scrape_until(api, lambda s: value(s, "realtime_llm_generations_total", outcome="error")
                         > value(before, "realtime_llm_generations_total", outcome="error"))
    errors = "realtime_llm_upstream_errors_total"
    assert value(after, errors, provider="fake") - value(before, errors, provider="fake") == 1
    assert value(after, "realtime_llm_generations_total", outcome="error") > value(before, "realtime_llm_generations_total", outcome="error")


def test_open_sockets_streams_and_running_generations_are_gauges(api: Api) -> None:
    headers, cid = new_chat(api)
    base = scrape(api)
    base_sockets = value(base, "realtime_llm_open_websockets")
    base_streams = value(base, "realtime_llm_open_sse_streams")
    base_running = value(base, "realtime_llm_running_generations")
    streaming = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=str(api.http.base_url), timeout=30) as client:
            with client.stream("GET", f"/api/chat/{cid}/events", headers=headers) as response:
                for line in response.iter_lines():
                    streaming.set()
                    if line.startswith("event: full_response"):
                        return

    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        watcher = threading.Thread(target=watch)
        watcher.start()
        streaming.wait(10)  # the first keep-alive comment: the stream is open
        socket.send({"type": "message", "content": "#fake tokens=100 delay_ms=20"})
        socket.recv_until("message")
        during = scrape(api)
        assert value(during, "realtime_llm_open_websockets") == base_sockets + 1
        assert value(during, "realtime_llm_open_sse_streams") == base_streams + 1
        assert value(during, "realtime_llm_running_generations") == base_running + 1
        socket.recv_until("full_response")
        watcher.join(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = scrape(api)
        if (value(after, "realtime_llm_open_websockets"), value(after, "realtime_llm_open_sse_streams"),
                value(after, "realtime_llm_running_generations")) == (base_sockets, base_streams, base_running):
            break
        time.sleep(0.05)
    assert value(after, "realtime_llm_open_websockets") == base_sockets
    assert value(after, "realtime_llm_open_sse_streams") == base_streams
    assert value(after, "realtime_llm_running_generations") == base_running


def test_an_event_stream_ends_when_its_client_leaves_not_at_the_next_write(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    """With a keep-alive of a minute and nothing to send, an event stream whose client hangs
    up is closed at once (its subscription with it), not when a write would fail; and a
    hang-up mid-answer is no server error."""
    config = base_config(tmp_path, "sqlite", upstream)
    config["stream"]["keepalive_seconds"] = 60
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    api = Api(server.url)
    try:
        headers, cid = new_chat(api)
        streams = "realtime_llm_open_sse_streams"
        for method, path, body in (("GET", f"/api/chat/{cid}/events", None),
                                   ("POST", f"/api/chat/{cid}", {"message": "#fake tokens=400 delay_ms=20"})):
            with httpx.Client(base_url=server.url, timeout=10) as client:
                with client.stream(method, path, headers=headers, json=body) as response:
                    assert response.status_code == 200
                    assert value(scrape_until(api, lambda s: value(s, streams) == 1), streams) == 1
                    if body is not None:
                        next(response.iter_lines())  # the answer is under way
            left = time.monotonic()
            assert value(scrape_until(api, lambda s: value(s, streams) == 0), streams) == 0
            assert time.monotonic() - left < 3  # well before the minute's keep-alive
        assert api.http.post(f"/api/chat/{cid}/stop", headers=headers).status_code == 200
    finally:
        api.http.close()
        server.stop()
    assert "Traceback" not in server.log() and "Exception in ASGI" not in server.log()
