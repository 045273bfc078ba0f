"""The command line: realtime-llm serve [--config PATH] [--host H] [--port P] [--workers N]."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from starlette.applications import Starlette

from realtime_llm.app import create_app
from realtime_llm.config import ConfigError, Settings, load_settings
from realtime_llm.httpprotocol import bounded_http_protocol
from realtime_llm.wsprotocol import WebSocketProtocol

STARTUP_FAILURE = 3  # a process that could not start (bind, database, Redis): restarting will not help


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


# At DEBUG these libraries log what must never be logged: aiosqlite and databases every
# query with its arguments (password hashes, sealed keys), uvicorn's WebSocket protocol
# trace the upgrade's Authorization header and every frame (auth tokens). They stay at INFO.
SECRET_TRACING_LOGGERS = ("aiosqlite", "databases", "uvicorn.error", "websockets")


class LogHygiene(logging.Filter):
    """No DEBUG records (they trace secrets). A client's malformed frame is the client's
    fault: a warning without a traceback, so a hostile client cannot fill the log with them."""

    CLIENT_FAULTS = frozenset({"Invalid UTF-8 sequence received from client."})  # uvicorn, closes 1007

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return False
        if record.msg in self.CLIENT_FAULTS:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    quiet_secret_tracing()


def quiet_secret_tracing() -> None:
    """Called again once uvicorn has configured its own loggers (it resets their levels)."""
    for name in SECRET_TRACING_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
        if not any(isinstance(f, LogHygiene) for f in logger.filters):
            logger.addFilter(LogHygiene())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"realtime-llm: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level)
    if settings.server.workers > 1:
        from realtime_llm.workers import run_workers

        return run_workers(settings)
    return run_server(settings, None, lambda host, port: print(describe(settings, host, port), flush=True))
