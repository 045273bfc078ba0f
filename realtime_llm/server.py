"""One process serving the app: the uvicorn server with this project's protocols and its
graceful drain, and the line that says where it listens."""
from __future__ import annotations

import asyncio
import signal
import socket
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from starlette.applications import Starlette

from realtime_llm.app import create_app
from realtime_llm.config import Settings
from realtime_llm.httpprotocol import bounded_http_protocol
from realtime_llm.logs import quiet_secret_tracing
from realtime_llm.wsprotocol import WebSocketProtocol

STARTUP_FAILURE = 3  # a process that could not start (bind, database, Redis): restarting will not help


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, rebuilt from its parts (never by search)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def describe(settings: Settings, host: str, port: int) -> str:
    if settings.redis.cluster:
        broker = f"redis cluster ({', '.join(settings.redis.cluster_nodes)}; sharded pub/sub)"
    elif settings.redis.enabled:
        broker = f"redis ({redact_url(settings.redis.connection_url())})"
    else:
        broker = "in-process"
    workers = f" | workers: {settings.server.workers}" if settings.server.workers > 1 else ""
    if ":" in host:
        host = f"[{host}]"
    return (
        f"realtime-llm listening on http://{host}:{port} | "
        f"database: {redact_url(settings.database_url)} | broker: {broker}{workers}"
    )


class RealtimeServer(uvicorn.Server):
    """Graceful shutdown as DESIGN.md and the deployment need it: stop accepting, let running
    answers finish within `server.shutdown_grace_seconds` (then stop them, saving what was
    said), and only then end streams and close sockets with 1001, so clients reconnect to
    another process and resume. uvicorn alone would close sockets with 1012 at once and
    wait for endless SSE streams."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        services = getattr(self.app.state, "services", None)
        if services is not None:
            for listener in self.servers:  # new connections go to the other processes
                listener.close()
            await services.shut_down(services.settings.server.shutdown_grace_seconds,
                                     cut_short=lambda: self.force_exit)
        await super().shutdown(sockets)


def uvicorn_config(settings: Settings, app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        lifespan="on",
        log_level=settings.server.log_level,
        access_log=False,
        server_header=False,
        http=bounded_http_protocol(settings.server.max_header_bytes, settings.server.header_timeout_seconds),
        ws=WebSocketProtocol,
        ws_max_size=settings.limits.max_ws_frame_bytes,
        ws_ping_interval=settings.stream.keepalive_seconds,
        ws_ping_timeout=settings.stream.keepalive_seconds,
        # Token deltas are small frames: compression costs more CPU than it saves bytes.
        ws_per_message_deflate=False,
        # Once generations are done and our streams are ended, what is left is plain requests.
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.server.keep_alive_seconds,
    )


async def serve(server: RealtimeServer, sockets: list[socket.socket] | None,
                on_started: Callable[[str, int], None]) -> int:
    # uvicorn re-raises the signal that stopped it once it has shut down; after a
    # graceful shutdown that should end the process with status 0, not "killed by SIGTERM".
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.02)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        on_started(host, port)

    announcing = asyncio.create_task(announce())
    try:
        await server.serve(sockets)
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind or start up
        return exc.code if isinstance(exc.code, int) else STARTUP_FAILURE
    finally:
        announcing.cancel()
    return 0 if server.started else STARTUP_FAILURE


def run_server(settings: Settings, sockets: list[socket.socket] | None,
               on_started: Callable[[str, int], None]) -> int:
    """One process serving the app: the whole server, or one worker of several."""
    app = create_app(settings)
    server = RealtimeServer(uvicorn_config(settings, app), app)
    quiet_secret_tracing()
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        return runner.run(serve(server, sockets, on_started))
