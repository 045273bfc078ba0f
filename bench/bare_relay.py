"""The thinnest possible relay, the baseline of streaming capacity (issue 7, figure 2) and
of CPU per relayed token (bench.relay_cpu): a bare Starlette app that opens the upstream
stream and forwards each token as it comes, over a WebSocket (one frame a token) or as
Server-Sent Events (one event a token). No auth, storage, batching or broker; the same
uvicorn settings and the same upstream client (providers/upstream_pool.py) as the server.

    python -m bench.bare_relay PORT UPSTREAM_BASE_URL

It speaks just enough of the server's protocol for the load generators: on the socket,
`ready`, then a `message` frame starts an answer, whose tokens come back as `message`
events and end with `full_response`; POST /api/chat/{id} with {"message"} streams the
same events as SSE.
"""
from __future__ import annotations

import sys
from typing import AsyncIterator

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from realtime_llm.providers.upstream_pool import UpstreamPool
from realtime_llm.wsprotocol import WebSocketProtocol


def app(upstream: str) -> Starlette:
    pool: list[UpstreamPool] = []  # made on the first request, inside the loop

    async def tokens(content: str) -> AsyncIterator[str]:
        if not pool:
            pool.append(UpstreamPool(upstream + "/chat/completions", connect_timeout=10, max_connections=2000))
        body = {"model": "fake-bare", "stream": True, "messages": [{"role": "user", "content": content}]}
        exchange = await pool[0].post({"Content-Type": "application/json"}, orjson.dumps(body))
        try:
            if (status := await exchange.head()) != 200:
                raise RuntimeError(f"the upstream answered HTTP {status}")
            while (events := await exchange.events()) is not None:  # None at the body's end
                for data in events:
                    if data == "[DONE]":
                        continue
                    delta = orjson.loads(data)["choices"][0]["delta"].get("content")
                    if delta:
                        yield delta
        finally:
            pool[0].release(exchange)

    async def relay(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text('{"event":"ready","data":""}')
        frame = orjson.loads(await websocket.receive_text())
        parts = []
        async for delta in tokens(frame["content"]):
            parts.append(delta)
            await websocket.send_text(orjson.dumps({"event": "message", "data": delta}).decode())
        await websocket.send_text(orjson.dumps({"event": "full_response", "data": "".join(parts)}).decode())
        await websocket.close()

    async def chat(request: Request) -> StreamingResponse:
        content = orjson.loads(await request.body())["message"]

        async def events() -> AsyncIterator[bytes]:
            parts = []
            async for delta in tokens(content):
                parts.append(delta)
                yield b"event: message\ndata: %s\n\n" % orjson.dumps({"event": "message", "data": delta})
            yield b"event: full_response\ndata: %s\n\n" % orjson.dumps({"event": "full_response",
                                                                        "data": "".join(parts)})

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[WebSocketRoute("/ws/conversations/{id}", relay),
                             Route("/api/chat/{id}", chat, methods=["POST"])])


def main() -> None:
    uvicorn.run(app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, ws=WebSocketProtocol, ws_per_message_deflate=False, lifespan="off")


if __name__ == "__main__":
    main()
