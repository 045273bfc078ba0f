"""What a model provider is: open a streamed completion, then read text deltas from it:
the answer's (str) and, for a reasoning model, its thinking's (Thought)."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import AsyncContextManager, AsyncIterator, Callable

from realtime_llm.errors import UpstreamError  # noqa: F401  (raised by every provider)
from realtime_llm.usage import Usage


class Thought(str):
    """A delta of the model's thinking, not of its answer (`reasoning` events)."""

    __slots__ = ()


@dataclass(frozen=True)
class Attachment:
    """A file a user message carries, as a model is given it: an image's bytes, or the
    text of a text file or a PDF."""

    name: str
    content_type: str
    size: int
    data: bytes = b""  # images
    text: str = ""  # text files and PDFs
    width: int | None = None
    height: int | None = None

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")


@dataclass(slots=True)
class ChatMessage:
    """One message of a prompt; never changed once made: a kept prompt path's are shared by
    every prompt and request made from it, turn after turn (store/paths.py). Not frozen: a
    prompt read whole makes one for every message, and a frozen dataclass's __init__
    (object.__setattr__ for each field) took 3.5 times as long. Over a prompt of 170
    messages (bench.relay_cpu's conversations reach that), making them, the provider's JSON
    of them and the usage estimate took 138 µs frozen, 94 as a named tuple, 64 as this (a
    throwaway timeit)."""

    role: str
    content: str
    reasoning: str = ""  # an earlier answer's thinking: sent only where the provider asks
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    api_key: str = ""
    max_tokens: int = 0  # 0: the model's own limit
    # The conversation's generation settings (temperature, top_p, max_tokens,
    # reasoning_effort): only those set, sent under the same names.
    params: dict[str, object] = field(default_factory=dict)
    # Deltas closer together than this may reach the reader together (relay.UpstreamReader
    # publishes them in batches this far apart anyway): a provider may wake its reader
    # once a window instead of for every delta. 0: each as it comes.
    batch_window: float = 0.0


class Completion:
    """What entering Provider.stream() gives: the answer's text deltas, Thought for the
    thinking (iterate it once), and, once they are read, the upstream's usage if it
    reported any and why the model stopped (`finish_reason`: "stop", "length", ...)."""

    def __init__(self, deltas: Callable[[Completion], AsyncIterator[str]]) -> None:
        """`deltas(completion)` makes the iterator, which may set `usage` and `finish_reason`."""
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self._deltas = deltas(self)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas


class Provider(abc.ABC):
    """Serves the models its configured patterns match."""

    name = ""  # the config's provider name, set by create_provider (metrics use it)
    can_title = True  # worth asking for a conversation title (the demo model is not)
    sends_reasoning = False  # earlier answers' thinking goes back upstream (config send_reasoning)

    async def start(self) -> None:  # noqa: B027  (optional: the demo provider opens nothing)
        """Open pooled connections; called once from the lifespan."""

    async def close(self) -> None:  # noqa: B027
        """Close what start() opened."""

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncContextManager[Completion]:
        """Entering sends the request and raises UpstreamError if it is refused; the
        completion then yields text deltas and raises UpstreamError if the stream breaks.
        Leaving closes the upstream request, whether or not it finished."""
