"""What a model provider is: open a streamed completion, then read text deltas from it."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import AsyncContextManager, AsyncIterator


from realtime_llm.errors import UpstreamError  # noqa: F401  (raised by every provider)


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    api_key: str = ""


class Provider(abc.ABC):
    """Serves the models its configured patterns match."""

    name = ""  # the config's provider name, set by create_provider (metrics use it)

    async def start(self) -> None:
        """Open pooled connections; called once from the lifespan."""

    async def close(self) -> None:
        """Close what start() opened."""

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncContextManager[AsyncIterator[str]]:
        """Entering sends the request and raises UpstreamError if it is refused; the
        iterator then yields text deltas and raises UpstreamError if the stream breaks.
        Leaving closes the upstream request, whether or not it finished."""
