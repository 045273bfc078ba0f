"""Any OpenAI-compatible /chat/completions endpoint, streamed, through one pooled client.

The client is aiohttp's, chosen by measurement over httpx (which this module used before):
against the bench upstream on this machine, time to the response's headers p50 0.71 ms
against 1.48 ms, and 8.0 ms of CPU per 1,000 streamed chunks against 14.6 ms, its HTTP
parser being C (llhttp) where httpx's h11 is Python. One session pools the connections:
aiohttp's connector has none of httpcore's pool scan that made httpx need many pools.
"""
from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import logging
from typing import Any, AsyncIterator, TypeGuard

import aiohttp
import orjson

from realtime_llm.config import ProviderSettings
from realtime_llm.errors import UpstreamError
from realtime_llm.providers.base import Attachment, ChatMessage, ChatRequest, Completion, Provider, Thought
from realtime_llm.providers.sse_reader import SSEParser
from realtime_llm.providers.think_tags import ThinkTagSplitter
from realtime_llm.usage import Usage

logger = logging.getLogger("realtime_llm.providers")

MAX_ERROR_BODY = 4096
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
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connect = self.settings.connect_timeout
        # connect: waiting for a pooled connection and opening one. The upstream's silence
        # is timed by stream() until the headers and by _text after them, not by aiohttp's
        # sock_read: in aiohttp 3.14.5 an answer that ends while its reading is paused (a
        # long one, relayed slower than it comes) goes back to the pool with that timer
        # re-armed by the draining, and it fires there: the next answer on the connection
        # failed at once, "timed out" (tests/test_upstream_client.py; aiohttp#12953 fixed
        # the case without a pause only).
        timeout = aiohttp.ClientTimeout(connect=connect, sock_connect=connect)
        # No cookie jar: one session serves every user, and an upstream's Set-Cookie for one
        # must not go out with another's request.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                                              timeout=timeout, trust_env=False,
                                              cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @contextlib.asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[Completion]:
        assert self._session is not None, "provider not started"
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
        # Until the headers, a bound on the whole (sending a large prompt included: the
        # socket timeouts bound each read, not a write the upstream never takes).
        try:
            async with asyncio.timeout(self.settings.connect_timeout + self.settings.read_timeout):
                # A redirect is a refusal (HTTP 30x), as it was: followed, it would send the
                # conversation wherever Location points (aiohttp follows by default).
                response = await self._session.post(self.url, data=orjson.dumps(body), allow_redirects=False,
                                                    headers={**headers, "Content-Type": "application/json"})
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(_network_message(exc, self.settings.name)) from None
        # (The provider's name, not its URL: a base_url may carry credentials.)
        logger.debug("provider %r answered HTTP %d for model %r (%d messages)", self.settings.name, response.status,
                     request.model, len(request.messages))
        try:
            silence = self.settings.read_timeout
            if response.status != 200:
                raise UpstreamError(await _refusal(response, key, silence))
            splitter = ThinkTagSplitter() if self.settings.think_tags else None
            yield Completion(lambda completion: _deltas(response, key, completion, splitter, silence))
        finally:  # unread to its end, the connection is closed rather than pooled
            response.release()

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


async def _deltas(response: aiohttp.ClientResponse, key: str, completion: Completion,
                  splitter: ThinkTagSplitter | None, silence: float) -> AsyncIterator[str]:
    """The answer's pieces as the body brings them: its bytes decoded (UTF-8; a character
    split across chunks is joined), cut into events (SSEParser) and each event's chunk
    parsed, in this one generator. As layers of generators of their own (the text, the
    events, aiohttp's iterator), each token went up and down three more frames: the
    server took 1.03× the CPU per token under bench.peers' load (both at once, 6 rounds).

    TimeoutError after `silence` seconds without a byte. aiohttp's own socket timeout does
    that, except after a chunk it cannot parse (a bad chunk size): llhttp's error drops the
    timer and never reaches the body's reader, which then waits for good. So a watchdog of
    ours too, one timer per `silence` rather than a timeout around every read."""
    loop = asyncio.get_running_loop()
    content = response.content
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    parser = SSEParser()
    heard = loop.time()
    watchdog: asyncio.TimerHandle

    def watch() -> None:
        nonlocal watchdog
        if loop.time() - heard >= silence:
            content.set_exception(TimeoutError("the upstream went silent"))
        else:
            watchdog = loop.call_at(heard + silence, watch)

    watchdog = loop.call_at(heard + silence, watch)
    try:
        while True:
            raw = await content.readany()
            if raw:
                heard = loop.time()
                events = parser.feed(decoder.decode(raw))
            else:  # the body's end
                events = parser.feed(decoder.decode(b"", final=True)) + parser.end()
            for data in events:
                if data.strip() == "[DONE]":
                    if splitter is not None and completion.finish_reason is None:  # no finish_reason came
                        for piece in splitter.end():
                            yield piece
                    if raw:
                        await _drain(content)
                    return
                for piece in _chunk_pieces(_parse_chunk(data, key), completion, splitter):
                    yield piece
            if not raw:
                break
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(_network_message(exc, "upstream")) from None
    finally:
        watchdog.cancel()
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


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read the body's end after [DONE] (it usually came with it), within
    DRAIN_AFTER_DONE_SECONDS, so that the connection goes back to the pool."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_AFTER_DONE_SECONDS):
            while await content.readany():
                pass


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


async def _refusal(response: aiohttp.ClientResponse, key: str, silence: float) -> str:
    raw = b""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):  # what came is enough to name it
        async with asyncio.timeout(silence):  # (see _text: aiohttp's own may never fire)
            while len(raw) < MAX_ERROR_BODY and (part := await response.content.read(MAX_ERROR_BODY - len(raw))):
                raw += part
    detail = ""
    try:
        body = orjson.loads(raw)
        detail = _error_text(body.get("error", body) if isinstance(body, dict) else body)
    except orjson.JSONDecodeError:
        detail = raw[:300].decode("utf-8", "replace").strip()
    message = f"the model refused the request (HTTP {response.status})"
    return f"{message}: {_redact(detail, key)}" if detail else message


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("error") or error.get("type") or ""
    return str(error)[:300]


def _redact(text: str, key: str) -> str:
    return text.replace(key, "[redacted]") if key and len(key) >= 4 else text


def _network_message(exc: Exception, name: str) -> str:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"could not reach the model provider {name!r} in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"could not reach the model provider {name!r}"
    if isinstance(exc, TimeoutError):  # aiohttp's socket timeouts are TimeoutErrors too
        return "the model stopped answering (timed out)"
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return "the model's connection closed in the middle of the answer"
    return f"the model request failed ({type(exc).__name__})"
