"""The thinnest possible fan-out, the baseline of figure 3 (bench.fanout, bench.fanout_scale):
a bare Starlette app, served with the server's own uvicorn configuration
(`server.uvicorn_config` on the default settings), whose sockets are all written every
message of one Redis pub/sub channel, framed once and written straight to each connection
(`WebSocketProtocol.write_event`, as the server does). No auth, storage, event ids, replay,
queues or upstream: what is left is the stack's own cost (uvicorn, redis-py, the kernel's
sends) on the same cores, under the same client.

    python -m bench.bare_fanout PORT REDIS_URL CHANNEL

A socket gets `ready` once it is watched; what the benchmark publishes on CHANNEL (an
event's JSON, `message` events stamped as bench.upstream stamps its tokens) goes to every
socket as it is. A baseline has no queue: a frame a connection refuses (paused by flow
control, closing) or a write that fails is counted, /healthz answers the counts, and
bench.fanout fails a round that had any (its delays would lack the late ones).
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import AsyncIterator, Callable

import redis.asyncio as redis
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from realtime_llm.config import Settings
from realtime_llm.events import Event
from realtime_llm.server import uvicorn_config
from realtime_llm.wsprotocol import event_writer


def app(redis_url: str, channel: str) -> Starlette:
    writers: set[Callable[[Event], bool]] = set()
    missed = {"refused": 0, "failed": 0}

    async def fan_out(pubsub: redis.client.PubSub) -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                event = Event(0, "", message["data"])
                for write in writers:
                    try:
                        missed["refused"] += not write(event)
                    except Exception:
                        missed["failed"] += 1

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        client = redis.Redis.from_url(redis_url, socket_timeout=None, socket_connect_timeout=5)
        pubsub = client.pubsub()
        await pubsub.subscribe(channel)  # before the server takes a socket: none misses a message
        task = asyncio.create_task(fan_out(pubsub))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await pubsub.aclose()
            await client.aclose()

    async def watch(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text('{"event":"ready","data":""}')
        write = event_writer(websocket.scope)
        assert write is not None
        writers.add(write)
        try:
            while True:
                await websocket.receive_text()  # (nothing the client sends means anything here)
        except WebSocketDisconnect:
            pass
        finally:
            writers.discard(write)

    async def healthz(_: object) -> JSONResponse:
        return JSONResponse(missed)

    return Starlette(routes=[WebSocketRoute("/ws/conversations/{id}", watch), Route("/healthz", healthz)],
                     lifespan=lifespan)


def main() -> None:
    settings = Settings().replace(server={"port": int(sys.argv[1]), "log_level": "warning"})
    uvicorn.Server(uvicorn_config(settings, app(sys.argv[2], sys.argv[3]))).run()

if __name__ == "__main__":
    main()
