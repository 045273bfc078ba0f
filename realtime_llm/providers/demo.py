"""The offline demo models: deterministic, no network, paced like a real one. `demo-think`
(any model whose name starts so) first thinks aloud for a few words, as a reasoning model."""
from __future__ import annotations

import asyncio
import contextlib
import re
from typing import AsyncIterator

from realtime_llm.config import ProviderSettings
from realtime_llm.providers.base import Attachment, ChatMessage, ChatRequest, Completion, Provider, Thought

TOKEN = re.compile(r"\s*\S+|\s+")


def demo_reply(request: ChatRequest) -> str:
    """The reply is built from the prompt, so it is the same for the same conversation; a
    line for each file the last message carries."""
    last = next((m for m in reversed(request.messages) if m.role == "user"), ChatMessage("user", ""))
    turns = sum(1 for m in request.messages if m.role == "user")
    files = "".join(f"\n- {describe(a)}" for a in last.attachments)
    return (
        f'You said: "{last.content.strip()}". I am the demo model of realtime-llm: I run offline '
        f"and answer every message the same way, so you can try the streaming without an API key. "
        f"This is turn {turns} of our conversation."
        + (f"\nYou attached:{files}" if files else "")
    )


def describe(attachment: Attachment) -> str:
    """`name` (type, size; an image's dimensions; a text's length)."""
    details = [attachment.content_type, f"{attachment.size} bytes"]
    if attachment.width and attachment.height:
        details.append(f"{attachment.width}×{attachment.height} pixels")
    elif not attachment.is_image:
        details.append(f"{len(attachment.text)} characters of text")
    return f"{attachment.name} ({', '.join(details)})"


def demo_thinking(request: ChatRequest) -> str:
    last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    return (f"The user wrote {len(last.split())} word(s). I am the demo model, so I will say what I "
            f"always say, and say which turn this is.")


def demo_tokens(text: str) -> list[str]:
    """Word-sized pieces that concatenate back to the text exactly."""
    return TOKEN.findall(text)


class DemoProvider(Provider):
    can_title = False  # it would only repeat itself: titles come from the first message

    def __init__(self, settings: ProviderSettings) -> None:
        self.delay = settings.delay_ms / 1000

    @contextlib.asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[Completion]:
        yield Completion(lambda completion: self._deltas(request, completion))  # no usage: it is estimated

    async def _deltas(self, request: ChatRequest, completion: Completion) -> AsyncIterator[str]:
        thinking = demo_tokens(demo_thinking(request)) if request.model.startswith("demo-think") else []
        answer = demo_tokens(demo_reply(request))
        limit = request.params.get("max_tokens")
        budget = limit if isinstance(limit, int) else len(thinking) + len(answer)
        pieces = [Thought(t) for t in thinking] + answer
        for token in pieces[:budget]:
            await asyncio.sleep(self.delay)
            yield token
        completion.finish_reason = "length" if budget < len(pieces) else "stop"
