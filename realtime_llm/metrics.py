"""Prometheus metrics (GET /metrics), with prometheus-client.

One process keeps them in memory. Several worker processes (`serve --workers N`) share them
through files in PROMETHEUS_MULTIPROC_DIR, which the parent sets before it starts them, so
one scrape of any worker answers for all of them; gauges then add up the live processes.
"""
from __future__ import annotations

import os
import time
from typing import Any, MutableMapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from realtime_llm.api.docs import documented

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "realtime_llm_http_requests_total", "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "realtime_llm_http_request_duration_seconds",
    "Time from request to the end of its answer (event streams: to the stream's end).",
    ["method", "route"],
)
OPEN_WEBSOCKETS = Gauge("realtime_llm_open_websockets", "Accepted WebSocket connections.", multiprocess_mode="livesum")
OPEN_SSE_STREAMS = Gauge("realtime_llm_open_sse_streams", "Open Server-Sent Events streams.",
                         multiprocess_mode="livesum")
RUNNING_GENERATIONS = Gauge(
    "realtime_llm_running_generations", "Generations running in this process (all processes: summed).",
    multiprocess_mode="livesum",
)
GENERATIONS = Counter("realtime_llm_generations_total", "Finished generations, by how they ended.", ["outcome"])
EVENTS_PUBLISHED = Counter("realtime_llm_events_published_total", "Conversation events published, by type.", ["type"])
UPSTREAM_ERRORS = Counter("realtime_llm_upstream_errors_total", "Model requests that failed, by provider.",
                          ["provider"])
UPSTREAM_FIRST_TOKEN_SECONDS = Histogram(
    "realtime_llm_upstream_first_token_seconds", "Time from the model request to its first token, by provider.",
    ["provider"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


_published: dict[str, Any] = {}  # EVENTS_PUBLISHED's child of each event type


def count_published(event_type: str) -> None:
    """One more event of `event_type` published: its counter found once, not through
    labels() (a lock and a key built) for every event."""
    child = _published.get(event_type)
    if child is None:
        child = _published[event_type] = EVENTS_PUBLISHED.labels(event_type)
    child.inc()


@documented({"summary": "Prometheus metrics (all worker processes)", "responses": {"200": {
    "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}})
async def metrics(request: Request) -> Response:
    if MULTIPROC_ENV in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: count and time HTTP requests by route template (never by raw path,
    which would give every conversation id a series of its own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method, route = scope["method"], _route_of(scope)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - began)


def _route_of(scope: MutableMapping[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
