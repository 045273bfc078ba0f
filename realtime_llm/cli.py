"""The command line: realtime-llm serve [--config PATH] [--host H] [--port P] [--workers N]."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from starlette.applications import Starlette

from realtime_llm.app import create_app
from realtime_llm.config import ConfigError, Settings, load_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="realtime-llm", description="Real-time LLM chat backend.")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the server (the default command)")
    for target in (parser, serve):
        target.add_argument("--config", help="path to config.yaml (default: $REALTIME_LLM_CONFIG or ./config.yaml)")
        target.add_argument("--host", help="address to listen on (server.host)")
        target.add_argument("--port", type=int, help="port to listen on (server.port)")
        target.add_argument("--workers", type=int, help="number of worker processes (needs Redis when > 1)")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    server = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port must be between 0 and 65535")
        server["port"] = args.port
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError("--workers must be at least 1")
        server["workers"] = args.workers
    settings = settings.replace(server=server) if server else settings
    if settings.server.workers > 1 and not settings.redis.enabled:
        raise ConfigError("more than one worker needs Redis: set redis.address or REDIS_URL")
    return settings


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
    broker = f"redis ({redact_url(settings.redis.connection_url())})" if settings.redis.enabled else "in-process"
    return (
        f"realtime-llm listening on http://{host}:{port} | "
        f"database: {redact_url(settings.database_url)} | broker: {broker}"
    )


class RealtimeServer(uvicorn.Server):
    """uvicorn would close WebSockets with 1012 and wait for endless SSE streams; ours end
    them first, sockets with 1001 as DESIGN.md promises."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        services = getattr(self.app.state, "services", None)
        if services is not None:
            services.begin_shutdown()
            await asyncio.sleep(0.2)  # let the closing frames go out
        await super().shutdown(sockets)


def uvicorn_config(settings: Settings, app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        lifespan="on",
        log_level="info",
        access_log=False,
        server_header=False,
        ws_max_size=settings.limits.max_ws_frame_bytes,
        ws_ping_interval=settings.stream.keepalive_seconds,
        ws_ping_timeout=settings.stream.keepalive_seconds,
        # Token deltas are small frames: compression costs more CPU than it saves bytes.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=10,
    )


async def serve(settings: Settings, server: uvicorn.Server) -> int:
    # uvicorn re-raises the signal that stopped it once it has shut down; after a
    # graceful shutdown that should end the process with status 0, not "killed by SIGTERM".
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.02)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        print(describe(settings, host, port), flush=True)

    announcing = asyncio.create_task(announce())
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind or start up
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        announcing.cancel()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"realtime-llm: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.server.workers > 1:
        print("realtime-llm: --workers > 1 is not available yet in this version", file=sys.stderr)
        return 2
    app = create_app(settings)
    server = RealtimeServer(uvicorn_config(settings, app), app)
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        return runner.run(serve(settings, server))
