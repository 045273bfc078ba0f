"""The offline demo model: deterministic, no network, paced like a real one."""
from __future__ import annotations

import asyncio
import contextlib
import re
from typing import AsyncIterator

from realtime_llm.config import ProviderSettings
from realtime_llm.providers.base import ChatRequest, Completion, Provider

TOKEN = re.compile(r"\s*\S+|\s+")


def demo_reply(request: ChatRequest) -> str:
    """The reply is built from the prompt, so it is the same for the same conversation."""
    last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    turns = sum(1 for m in request.messages if m.role == "user")
    return (
        f'You said: "{last.strip()}". I am the demo model of realtime-llm: I run offline '
        f"and answer every message the same way, so you can try the streaming without an API key. "
        f"This is turn {turns} of our conversation."
    )


def demo_tokens(text: str) -> list[str]:
    """Word-sized pieces that concatenate back to the text exactly."""
    return TOKEN.findall(text)


class DemoProvider(Provider):
    can_title = False  # it would only repeat itself: titles come from the first message

    def __init__(self, settings: ProviderSettings) -> None:
        self.delay = settings.delay_ms / 1000

    @contextlib.asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[Completion]:
        yield Completion(lambda _: self._deltas(demo_reply(request)))  # no usage: it is estimated

    async def _deltas(self, text: str) -> AsyncIterator[str]:
        for token in demo_tokens(text):
            await asyncio.sleep(self.delay)
            yield token
