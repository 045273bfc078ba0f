"""Any OpenAI-compatible /chat/completions endpoint, streamed, through one pooled client
(upstream_pool.py and upstream_http.py, on httptools; aiohttp's before it and httpx's
before that, each replaced by measurement).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any, AsyncIterator, TypeGuard

import orjson

from realtime_llm.config import ProviderSettings
from realtime_llm.errors import UpstreamError
from realtime_llm.providers.base import Attachment, ChatMessage, ChatRequest, Completion, Provider, Thought
from realtime_llm.providers.think_tags import ThinkTagSplitter
from realtime_llm.providers.upstream_http import (
    ConnectFailed,
    ConnectionBroken,
    ConnectTimedOut,
    Exchange,
    UpstreamHTTPError,
    header_safe,
)
from realtime_llm.providers.upstream_pool import UpstreamPool
from realtime_llm.usage import Usage

logger = logging.getLogger("realtime_llm.providers")

# After [DONE] the body's end is read (it usually came with it) so the connection goes
# back to the pool: left unread, it was closed and every answer paid a new TCP connect.
# An upstream that keeps the stream open past [DONE] costs at most this, then a close.
DRAIN_AFTER_DONE_SECONDS = 0.05
# Streams open at once to one provider; more wait (up to connect_timeout) for a connection.
MAX_CONNECTIONS = 2000


class OpenAIProvider(Provider):
    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self._pool: UpstreamPool | None = None

    async def start(self) -> None:
        # The upstream's silence is timed by stream() until the headers and by the
        # exchange's watchdog after them (between reads, and while events wait unread).
        self._pool = UpstreamPool(self.url, self.settings.connect_timeout, MAX_CONNECTIONS)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    @contextlib.asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[Completion]:
        pool = self._pool
        assert pool is not None, "provider not started"
        key = request.api_key or self.settings.api_key
        if not header_safe(key):
            raise UpstreamError("the API key holds characters that cannot be sent in a header")
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif pool.basic_auth:  # credentials in base_url
            headers["Authorization"] = pool.basic_auth
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
        # Until the headers, a bound on the whole (sending a large prompt included).
        exchange: Exchange | None = None
        try:
            async with asyncio.timeout(self.settings.connect_timeout + self.settings.read_timeout):
                exchange = await pool.post(headers, orjson.dumps(body))
                status = await exchange.head()
        except BaseException as exc:
            if exchange is not None:
                pool.release(exchange)
            if isinstance(exc, (UpstreamHTTPError, TimeoutError)):
                raise UpstreamError(_network_message(exc, self.settings.name)) from None
            raise
        # (The provider's name, not its URL: a base_url may carry credentials.)
        logger.debug("provider %r answered HTTP %d for model %r (%d messages)", self.settings.name, status,
                     request.model, len(request.messages))
        try:
            silence = self.settings.read_timeout
            if status != 200:
                raise UpstreamError(await _refusal(exchange, status, key, silence))
            splitter = ThinkTagSplitter() if self.settings.think_tags else None
            yield Completion(lambda completion: _deltas(exchange, key, completion, splitter, silence,
                                                        request.batch_window))
        finally:  # unread to its end, the connection is closed rather than pooled
            pool.release(exchange)

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


async def _deltas(exchange: Exchange, key: str, completion: Completion,
                  splitter: ThinkTagSplitter | None, silence: float, window: float) -> AsyncIterator[str]:
    """The answer's pieces as the body brings them: the exchange cuts the events as the
    bytes come (upstream_http.py), and each event's chunk is parsed here; those that come
    within `window` of pieces taken are taken together (Exchange.hold). TimeoutError after
    `silence` seconds without a byte (the exchange's watchdog)."""
    exchange.watch(silence)
    try:
        while (events := await exchange.events()) is not None:
            taken = False
            for data in events:
                if data.strip() == "[DONE]":
                    if splitter is not None and completion.finish_reason is None:  # no finish_reason came
                        for piece in splitter.end():
                            yield piece
                    await _drain(exchange)
                    return
                for piece in _chunk_pieces(_parse_chunk(data, key), completion, splitter):
                    taken = True
                    yield piece
            if taken:  # (not after chunks without any: a role's, a usage's, a tag held back)
                exchange.hold(window)
    except (UpstreamHTTPError, TimeoutError) as exc:
        raise UpstreamError(_network_message(exc, "upstream")) from None
    if completion.finish_reason is None:
        raise UpstreamError("the model's stream ended before the answer was complete")


def _chunk_pieces(chunk: dict[str, Any], completion: Completion, splitter: ThinkTagSplitter | None) -> list[str]:
    """A chunk's pieces, its choices' in order; its usage and finish reason noted on `completion`."""
    usage = _usage(chunk.get("usage"))
    if usage is not None:
        completion.usage = usage
    pieces: list[str] = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            pieces.extend(_pieces(delta, splitter))
        reason = choice.get("finish_reason")
        if reason:
            completion.finish_reason = str(reason)[:40]
            if splitter is not None:
                pieces.extend(splitter.end())
    return pieces


async def _drain(exchange: Exchange) -> None:
    """Read the body's end after [DONE] (it usually came with it), within
    DRAIN_AFTER_DONE_SECONDS, so that the connection goes back to the pool."""
    with contextlib.suppress(TimeoutError, UpstreamHTTPError):
        async with asyncio.timeout(DRAIN_AFTER_DONE_SECONDS):
            await exchange.ended()


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


async def _refusal(exchange: Exchange, status: int, key: str, silence: float) -> str:
    raw = b""
    with contextlib.suppress(UpstreamHTTPError, TimeoutError):  # what came is enough to name it
        async with asyncio.timeout(silence):
            raw = await exchange.error_body()
    raw = raw or bytes(exchange.body)
    detail = ""
    try:
        body = orjson.loads(raw)
        detail = _error_text(body.get("error", body) if isinstance(body, dict) else body)
    except orjson.JSONDecodeError:
        detail = raw[:300].decode("utf-8", "replace").strip()
    message = f"the model refused the request (HTTP {status})"
    return f"{message}: {_redact(detail, key)}" if detail else message


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("error") or error.get("type") or ""
    return str(error)[:300]


def _redact(text: str, key: str) -> str:
    return text.replace(key, "[redacted]") if key and len(key) >= 4 else text


def _network_message(exc: Exception, name: str) -> str:
    if isinstance(exc, ConnectTimedOut):
        return f"could not reach the model provider {name!r} in time"
    if isinstance(exc, ConnectFailed):
        return f"could not reach the model provider {name!r}"
    if isinstance(exc, TimeoutError):
        return "the model stopped answering (timed out)"
    if isinstance(exc, ConnectionBroken):
        return "the model's connection closed in the middle of the answer"
    return f"the model request failed ({type(exc).__name__})"
