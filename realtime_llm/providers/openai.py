"""Any OpenAI-compatible /chat/completions endpoint, streamed, through one pooled client."""
from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any, AsyncIterator, TypeGuard

import httpx
import orjson

from realtime_llm.config import ProviderSettings
from realtime_llm.errors import UpstreamError
from realtime_llm.providers.base import Attachment, ChatMessage, ChatRequest, Completion, Provider, Thought
from realtime_llm.providers.sse_reader import sse_data
from realtime_llm.providers.think_tags import ThinkTagSplitter
from realtime_llm.usage import Usage

MAX_ERROR_BODY = 4096
# After [DONE] the body's end is read (it usually came with it) so the connection goes
# back to the pool: left unread, it was closed and every answer paid a new TCP connect.
# An upstream that keeps the stream open past [DONE] costs at most this, then a close.
DRAIN_AFTER_DONE_SECONDS = 0.05


# httpcore scans its whole pool, quadratically, on every request and every response's
# close (connection_pool.py, _assign_requests_to_connections): at 150 concurrent streams
# that was 12-20 % of the server's CPU (py-spy, bench.ws_streams). Requests go to the
# least busy of several small pools instead (the first, when all are idle: a connection
# is reused); each keeps up to KEEPALIVE_PER_POOL idle connections.
POOLS = 16
KEEPALIVE_PER_POOL = 16


class OpenAIProvider(Provider):
    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self._clients: list[httpx.AsyncClient] = []
        self._busy = [0] * POOLS  # streams open in each pool

    async def start(self) -> None:
        timeout = httpx.Timeout(
            connect=self.settings.connect_timeout,
            read=self.settings.read_timeout,
            write=self.settings.connect_timeout,
            pool=self.settings.connect_timeout,
        )
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=KEEPALIVE_PER_POOL)
        self._clients = [httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) for _ in range(POOLS)]

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()

    @contextlib.asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[Completion]:
        assert self._clients, "provider not started"
        key = request.api_key or self.settings.api_key
        headers = {"Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body: dict[str, Any] = {
            **request.params,  # the conversation's settings, those it has set
            "model": request.model,
            "messages": [self._message(m) for m in request.messages],
            "stream": True,
        }
        if self.settings.include_usage:  # the token counts come in a last chunk
            body["stream_options"] = {"include_usage": True}
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        pool = min(range(POOLS), key=self._busy.__getitem__)
        self._busy[pool] += 1
        try:
            async with self._clients[pool].stream(
                "POST", self.url, content=orjson.dumps(body), headers={**headers, "Content-Type": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise UpstreamError(await _refusal(response, key))
                splitter = ThinkTagSplitter() if self.settings.think_tags else None
                yield Completion(lambda completion: _deltas(response, key, completion, splitter))
        except httpx.HTTPError as exc:
            raise UpstreamError(_network_message(exc, self.settings.name)) from None
        finally:
            self._busy[pool] -= 1

    def _message(self, message: ChatMessage) -> dict[str, object]:
        shown: dict[str, object] = {"role": message.role, "content": message.content}
        if message.attachments:  # OpenAI's content parts: the text, then each file
            shown["content"] = [{"type": "text", "text": message.content}, *map(content_part, message.attachments)]
        if message.reasoning:  # in the prompt only where this provider sends it (prompt.py)
            shown["reasoning_content"] = message.reasoning
        return shown


def content_part(attachment: Attachment) -> dict[str, object]:
    """An image as a data URL; a text file or a PDF as its text, headed by its name."""
    if attachment.is_image:
        url = f"data:{attachment.content_type};base64,{base64.b64encode(attachment.data).decode()}"
        return {"type": "image_url", "image_url": {"url": url}}
    return {"type": "text", "text": f"{attachment.name}:\n{attachment.text}"}


async def _deltas(response: httpx.Response, key: str, completion: Completion,
                  splitter: ThinkTagSplitter | None) -> AsyncIterator[str]:
    finished = False
    events = sse_data(response.aiter_text())
    try:
        async for data in events:
            if data.strip() == "[DONE]":
                if splitter is not None and not finished:  # [DONE] with no finish_reason before it
                    for piece in splitter.end():
                        yield piece
                with contextlib.suppress(TimeoutError, httpx.HTTPError):
                    async with asyncio.timeout(DRAIN_AFTER_DONE_SECONDS):
                        async for _ in events:
                            pass
                return
            chunk = _parse_chunk(data, key)
            usage = _usage(chunk.get("usage"))
            if usage is not None:
                completion.usage = usage
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    for piece in _pieces(delta, splitter):
                        yield piece
                reason = choice.get("finish_reason")
                if reason:
                    finished = True
                    completion.finish_reason = str(reason)[:40]
                    if splitter is not None:
                        for piece in splitter.end():
                            yield piece
    except httpx.HTTPError as exc:
        raise UpstreamError(_network_message(exc, "upstream")) from None
    if not finished:
        raise UpstreamError("the model's stream ended before the answer was complete")


def _pieces(delta: dict[str, Any], splitter: ThinkTagSplitter | None) -> list[str]:
    """A chunk's deltas: its thinking (`reasoning_content`, as DeepSeek and older vLLM send
    it, or `reasoning`, as vLLM, OpenRouter and Ollama do), then its answer text."""
    pieces: list[str] = []
    for name in ("reasoning_content", "reasoning"):
        thought = delta.get(name)
        if isinstance(thought, str) and thought:
            pieces.append(Thought(thought))
            break  # a proxy may send both, with the same text
    content = delta.get("content")
    if isinstance(content, str) and content:
        pieces.extend(splitter.feed(content) if splitter is not None else (content,))
    return pieces


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not (_count(prompt) and _count(completion)):
        return None
    details = raw.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(prompt, completion, reasoning_tokens=reasoning if _count(reasoning) else None)


def _count(n: object) -> TypeGuard[int]:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31


def _parse_chunk(data: str, key: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("the model sent malformed data") from None
    if not isinstance(chunk, dict):
        raise UpstreamError("the model sent malformed data")
    if chunk.get("error"):
        raise UpstreamError(f"the model reported an error: {_redact(_error_text(chunk['error']), key)}")
    return chunk


async def _refusal(response: httpx.Response, key: str) -> str:
    raw = b""
    async for part in response.aiter_bytes():
        raw += part
        if len(raw) >= MAX_ERROR_BODY:
            break
    detail = ""
    try:
        body = orjson.loads(raw)
        detail = _error_text(body.get("error", body) if isinstance(body, dict) else body)
    except orjson.JSONDecodeError:
        detail = raw[:300].decode("utf-8", "replace").strip()
    message = f"the model refused the request (HTTP {response.status_code})"
    return f"{message}: {_redact(detail, key)}" if detail else message


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("error") or error.get("type") or ""
    return str(error)[:300]


def _redact(text: str, key: str) -> str:
    return text.replace(key, "[redacted]") if key and len(key) >= 4 else text


def _network_message(exc: httpx.HTTPError, name: str) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"could not reach the model provider {name!r} in time"
    if isinstance(exc, httpx.ConnectError):
        return f"could not reach the model provider {name!r}"
    if isinstance(exc, httpx.TimeoutException):
        return "the model stopped answering (timed out)"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return "the model's connection closed in the middle of the answer"
    return f"the model request failed ({type(exc).__name__})"
