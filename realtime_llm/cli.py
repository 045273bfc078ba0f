"""The command line: realtime-llm serve [--config PATH] [--host H] [--port P] [--workers N];
realtime-llm import-original --from-sqlite PATH [--from-redis URL] [--config PATH]."""
from __future__ import annotations

import argparse
import asyncio
import sys

from realtime_llm.config import ConfigError, Settings
from realtime_llm.configfile import load_settings
from realtime_llm.logs import configure_logging
from realtime_llm.server import describe, run_server
from realtime_llm.workers import run_workers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="realtime-llm", description="Real-time LLM chat backend.")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the server (the default command)")
    for target in (parser, serve):
        target.add_argument("--config", help="path to config.yaml (default: $REALTIME_LLM_CONFIG or ./config.yaml)")
        target.add_argument("--host", help="address to listen on (server.host)")
        target.add_argument("--port", type=int, help="port to listen on (server.port)")
        target.add_argument("--workers", type=int, help="number of worker processes (needs Redis when > 1)")
    move = commands.add_parser("import-original", help="import llm-backend-api's users and conversations")
    move.add_argument("--from-sqlite", required=True, metavar="PATH", help="the original's SQLite file")
    move.add_argument("--from-redis", metavar="URL", help="the original's Redis, e.g. redis://127.0.0.1:6379/0")
    move.add_argument("--config", help="path to config.yaml (default: $REALTIME_LLM_CONFIG or ./config.yaml)")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if args.command == "import-original":
        return settings
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
        raise ConfigError("more than one worker needs Redis: set redis.address, REDIS_URL or REDIS_CLUSTER_NODES")
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"realtime-llm: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level)
    if args.command == "import-original":
        return import_original_command(settings, args.from_sqlite, args.from_redis)
    if settings.server.workers > 1:
        return run_workers(settings)
    return run_server(settings, None, lambda host, port: print(describe(settings, host, port), flush=True))


def import_original_command(settings: Settings, sqlite_path: str, redis_url: str | None) -> int:
    from realtime_llm.importers.original import UnreadableSource
    from realtime_llm.importers.original_command import Report, import_original
    from realtime_llm.services import server_secret

    report = Report(lambda line: print(line, flush=True))
    try:
        asyncio.run(import_original(settings, server_secret(settings), sqlite_path, redis_url, report))
    except UnreadableSource as exc:
        print(f"realtime-llm: cannot read the original: {exc}", file=sys.stderr)
        return 1
    finally:
        print(report.summary(), flush=True)  # also of what a failing source let through
    return 0
