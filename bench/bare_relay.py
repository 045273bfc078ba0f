"""The thinnest possible relay, the baseline of streaming capacity (issue 7, figure 2):
a bare Starlette WebSocket endpoint that opens the upstream stream and forwards each
token as one frame. No auth, storage or broker; the same uvicorn settings as the server.

    python -m bench.bare_relay PORT UPSTREAM_BASE_URL

It speaks just enough of the server's protocol for the load generator of
bench.ws_streams: `ready`, then a `message` frame starts an answer, whose tokens come
back as `message` events and end with `full_response`.
"""
from __future__ import annotations

import sys

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from realtime_llm.providers.sse_reader import sse_data
from realtime_llm.wsprotocol import WebSocketProtocol


def app(upstream: str) -> Starlette:
    client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None))

    async def relay(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text('{"event":"ready","data":""}')
        frame = orjson.loads(await websocket.receive_text())
        body = {"model": "fake-bare", "stream": True, "messages": [{"role": "user", "content": frame["content"]}]}
        parts = []
        async with client.stream("POST", upstream + "/chat/completions", json=body) as response:
            async for data in sse_data(response.aiter_text()):  # SSE lines split on \n only
                if data == "[DONE]":
                    continue
                delta = orjson.loads(data)["choices"][0]["delta"].get("content")
                if delta:
                    parts.append(delta)
                    await websocket.send_text(orjson.dumps({"event": "message", "data": delta}).decode())
        await websocket.send_text(orjson.dumps({"event": "full_response", "data": "".join(parts)}).decode())
        await websocket.close()

    return Starlette(routes=[WebSocketRoute("/ws/conversations/{id}", relay)])


def main() -> None:
    uvicorn.run(app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, ws=WebSocketProtocol, ws_per_message_deflate=False, lifespan="off")


if __name__ == "__main__":
    main()
