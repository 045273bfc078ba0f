"""A fake OpenAI-compatible upstream: a real HTTP server on loopback, steered per request.

The last user message steers it with a directive line, e.g.

    #fake tokens=20 delay_ms=50 drop_after=5

    tokens=N          answer with N tokens "t0 ", "t1 ", ... (default 5)
    size=N            pad each token with "x" to N characters
    stamp=1           each token is "<unix time of emission>" (benchmarks measure delivery delay)
    echo=1            answer with the text after the directive line, 3 characters a chunk
    delay_ms=D        pause before each token
    status=S          refuse with HTTP S and an OpenAI-style error body
    head_delay_ms=D   wait D ms before answering at all (a queue, a long prompt)
    drop_after=K      close the connection abruptly after K tokens
    malformed_after=K send a chunk that is not JSON after K tokens
    error_after=K     send an in-stream error object after K tokens
    hang=1            send headers, then nothing
    hang_after_done=1 keep the stream open after [DONE] (ending it an hour later)
    no_finish=1       end the stream after the tokens with no finish_reason and no [DONE]
    usage=P,C         report prompt_tokens P and completion_tokens C in a last chunk, as
                      OpenAI does, if the request asked (stream_options.include_usage)
    reasoning_tokens=R  with usage: completion_tokens_details.reasoning_tokens R
    think=N           think first: N tokens "r0 ", "r1 ", ... in delta.reasoning_content
    think_field=F     ... in delta.F instead (reasoning: vLLM, OpenRouter, Ollama), or, with
                      F=tags, inside content as <think>...</think>, the tags cut mid-word
    interleave=1      think again after every second answer token (one thinking token)
    finish=R          the finish_reason (default stop): length, content_filter
    title_delay_ms=D  (anywhere in the conversation) the title request that follows its
                      first answer waits D ms before each token
    title_think=N     (likewise) the title's answer thinks N tokens first

Every request is recorded: its JSON body, its headers, and whether the client closed the
stream before it ended.
"""
from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers import free_port


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    client_port: int = 0  # the same port twice: the caller reused its connection
    completed: bool = False
    closed_early: bool = False
    started: float = field(default_factory=time.monotonic)


def parse_directive(messages: list[dict[str, Any]]) -> tuple[dict[str, str], str]:
    last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    if isinstance(last, list):  # content parts (attachments): the directive is in the first text
        last = next((p.get("text", "") for p in last if p.get("type") == "text"), "")
    first, _, rest = last.partition("\n")
    if not first.startswith("#fake"):
        return {}, last
    options = dict(part.split("=", 1) for part in first.split()[1:] if "=" in part)
    return options, rest


def _chunk(content: str | None = None, finish: str | None = None, role: str | None = None,
           field: str = "content") -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta[field] = content
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _frame(payload: dict[str, Any], index: int) -> bytes:
    text = orjson.dumps(payload).decode()
    if index % 3 == 1:  # exercise multi-line data: the JSON split over two data lines
        cut = text.index(",") + 1
        return f"data: {text[:cut]}\ndata: {text[cut:]}\n\n".encode()
    if index % 3 == 2:  # and comments, and CRLF line endings
        return f": keep-alive\r\ndata: {text}\r\n\r\n".encode()
    return f"data: {text}\n\n".encode()


def with_thinking(options: dict[str, str], answer: list[str]) -> list[tuple[str, str]]:
    """The stream's deltas as (delta field, text): the thinking that `think`,
    `think_field` and `interleave` ask for, around the answer's tokens."""
    thinking = [f"r{i} " for i in range(int(options.get("think", 0)))]
    field = options.get("think_field", "reasoning_content")
    if field == "tags":  # a raw model: the block inside content, its tags cut anywhere
        text = "<think>" + "".join(thinking) + "</think>\n\n" if thinking else ""
        cuts = [text[i:i + 4] for i in range(0, len(text), 4)]  # "<thi", "nk>r", ... "</th", "ink>"
        return [("content", c) for c in cuts] + [("content", t) for t in answer]
    deltas = [(field, t) for t in thinking]
    for i, token in enumerate(answer):
        deltas.append(("content", token))
        if options.get("interleave") and i % 2 == 1:
            deltas.append((field, f"more{i} "))
    return deltas


class FakeUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.completions, methods=["POST"])])

    async def completions(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        record = Received(body=body, headers=dict(request.headers),
                          client_port=request.client.port if request.client else 0)
        self.received.append(record)
        options, rest = parse_directive(body.get("messages", []))
        messages = body.get("messages") or [{}]
        if str(messages[0].get("content", "")).startswith("Write a title"):
            slow = re.search(r"title_delay_ms=(\d+)", str(messages[-1].get("content", "")))
            thinks = re.search(r"title_think=(\d+)", str(messages[-1].get("content", "")))
            options = {"delay_ms": slow.group(1)} if slow else {}
            if thinks:
                options["think"] = thinks.group(1)
        if "head_delay_ms" in options:
            await asyncio.sleep(int(options["head_delay_ms"]) / 1000)
        if "status" in options:
            status = int(options["status"])
            record.completed = True
            return JSONResponse({"error": {"message": f"fake refusal {status}", "type": "test"}}, status_code=status)
        if options.get("echo"):
            tokens = [rest[i:i + 3] for i in range(0, len(rest), 3)]
        else:
            size = int(options.get("size", 0))
            tokens = [f"t{i} ".ljust(size, "x") for i in range(int(options.get("tokens", 5)))]
        return StreamingResponse(self._stream(record, options, with_thinking(options, tokens)),
                                 media_type="text/event-stream")

    async def _stream(self, record: Received, options: dict[str, str],
                      tokens: list[tuple[str, str]]) -> AsyncIterator[bytes]:
        delay = int(options.get("delay_ms", 0)) / 1000
        try:
            yield _frame(_chunk(role="assistant"), 0)
            if options.get("hang"):
                await asyncio.sleep(3600)
            for i, (field, token) in enumerate(tokens):
                if delay:
                    await asyncio.sleep(delay)
                if str(i) == options.get("drop_after"):
                    raise ConnectionAbortedError("fake upstream drops the connection")
                if str(i) == options.get("malformed_after"):
                    yield b"data: {this is not json\n\n"
                if str(i) == options.get("error_after"):
                    yield _frame({"error": {"message": "fake in-stream failure"}}, 0)
                yield _frame(_chunk(f"<{time.time():.6f}>" if options.get("stamp") else token, field=field), i + 1)
            if options.get("no_finish"):
                record.completed = True
                return
            yield _frame(_chunk(finish=options.get("finish", "stop")), 0)
            if "usage" in options and (record.body.get("stream_options") or {}).get("include_usage"):
                prompt, completion = (int(n) for n in options["usage"].split(","))
                usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                         "total_tokens": prompt + completion}
                if "reasoning_tokens" in options:
                    usage["completion_tokens_details"] = {"reasoning_tokens": int(options["reasoning_tokens"])}
                yield _frame({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage}, 0)
            yield b"data: [DONE]\n\n"
            record.completed = True
            if options.get("hang_after_done"):
                await asyncio.sleep(3600)
        finally:
            if not record.completed:
                record.closed_early = True

    def start(self) -> FakeUpstream:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)

    def request_for(self, message: str, timeout: float = 10.0) -> Received:
        """The recorded request whose last message is `message`, once it has arrived."""
        def find() -> Received | None:
            for record in reversed(self.received):
                messages = record.body.get("messages") or [{}]
                if messages[-1].get("content") == message:
                    return record
            return None

        if not self.wait_for(lambda: find() is not None, timeout):
            raise AssertionError(f"the upstream never received {message!r}")
        found = find()
        assert found is not None
        return found

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """A request's head (its body, of Content-Length bytes, read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return head
