"""Which modules of realtime_llm/ run while one chat message goes from POST /api/chat/{id}
to a WebSocket subscriber's full_response (the answer saved on the way):
`.venv/bin/python -m bench.chat_walk`.

The server runs in this process (SQLite file, in-process broker, the demo model); a
profile hook notes the file of every function called in that window. It is the upper
bound of what a reader following the message might open: auth, metrics and limits run
on the way too.
"""
from __future__ import annotations

import asyncio
import sys
import tempfile
from types import FrameType
from typing import Any

import httpx
import orjson
import uvicorn
import websockets

from realtime_llm.app import create_app
from realtime_llm.configfile import load_settings


async def walk() -> dict[str, set[str]]:
    directory = tempfile.mkdtemp()
    settings = load_settings(None, {"DATABASE_URL": f"sqlite:///{directory}/walk.db", "JWT_SECRET": "w" * 40})
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    seen: dict[str, set[str]] = {}

    def note(frame: FrameType, event: str, _: Any) -> None:
        if event == "call" and "/realtime_llm/" in frame.f_code.co_filename:
            module = frame.f_code.co_filename.split("/realtime_llm/", 1)[1]
            seen.setdefault(module, set()).add(frame.f_code.co_name)

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            user = {"username": "walker", "password": "walker-password"}
            await client.post("/api/users/register", json=user)
            token = (await client.post("/api/users/login", json=user)).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            created = await client.post("/api/conversations/create", json={"model": "demo"}, headers=headers)
            cid = created.json()["conversation_id"]
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/conversations/{cid}",
                                          additional_headers=headers) as socket:
                await socket.recv()  # ready
                sys.setprofile(note)
                chat = asyncio.create_task(client.post(f"/api/chat/{cid}", json={"message": "hello"}, headers=headers))
                while orjson.loads(await socket.recv()).get("event") != "full_response":
                    pass
                sys.setprofile(None)
                (await chat).raise_for_status()
    finally:
        sys.setprofile(None)
        server.should_exit = True
        await serving
    return seen


def main() -> None:
    seen = asyncio.run(walk())
    for module in sorted(seen):
        print(f"{module:28s} {', '.join(sorted(seen[module]))[:100]}")
    print(f"{len(seen)} modules ran")


if __name__ == "__main__":
    main()
