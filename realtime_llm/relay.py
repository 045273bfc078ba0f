"""A generation's answer, from the model to the subscribers: the prompt, the upstream
request (read by a task of its own), the deltas published in batches.

The upstream reader is the one thing a stop interrupts. The generation's own task awaits the
reader's inbox and is never cancelled to stop, so a publish or a save under way always
runs to its end: a stop is STOPPED put into that inbox (batching.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from prometheus_client import Histogram

from realtime_llm.batching import ACCEPTED, END, STOPPED, Inbox, Stopped, coalesce
from realtime_llm.branches import announce_truncate
from realtime_llm.broker import Broker
from realtime_llm.config import Settings
from realtime_llm.events import MESSAGE, REASONING
from realtime_llm.metrics import UPSTREAM_ERRORS, UPSTREAM_FIRST_TOKEN_SECONDS
from realtime_llm.params import load_params
from realtime_llm.prompt import build_prompt, kept_prompt
from realtime_llm.providers import ChatMessage, ChatRequest, Provider, Thought, UpstreamError
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.records import Conversation
from realtime_llm.tasks import finish_task
from realtime_llm.usage import Usage

if TYPE_CHECKING:
    from realtime_llm.generation import Generation

logger = logging.getLogger("realtime_llm.generation")

# How a model may end an answer, as `done` says it (any other finish_reason: "stop").
FINISH_REASONS = frozenset({"length", "content_filter"})


@dataclass
class Answer:
    """What has been published of an answer: the texts of its `message` events (whose
    concatenation full_response is) and of its `reasoning` events."""

    parts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.thoughts)


class UpstreamReader:
    """Inside `async with`, the upstream's answer arrives in `inbox`: ACCEPTED once the
    request is taken, the text deltas, then END (or the UpstreamError that broke it),
    handed out in batches `window` seconds apart (batching.Inbox). Leaving closes the
    upstream request, finished or not."""

    def __init__(self, provider: Provider, request: ChatRequest, window: float = 0.0) -> None:
        self.provider = provider
        self.request = request
        self.inbox = Inbox(window)
        self.usage: Usage | None = None  # the upstream's own counts, once its stream ended
        self.finish_reason: str | None = None  # the model's, once its stream ended
        self.began = 0.0  # when the upstream was asked
        self.first_delta = 0.0  # when its first delta came (0: none yet)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Ask the upstream now (entering starts it, if this did not)."""
        if self._task is None:
            self.began = time.monotonic()
            self._task = asyncio.create_task(self._read(), name="upstream-reader")

    def cancel(self) -> None:
        """Close the upstream request, finished or not, without waiting for it to end."""
        if self._task is not None:
            self._task.cancel()  # done already, unless the answer was stopped or failed here

    async def close(self) -> None:
        """Close the upstream request and wait for its reading to end (what leaving does)."""
        self.cancel()
        if self._task is not None:
            await finish_task(self._task)

    def stop(self) -> None:
        """Whoever waits on the inbox sees the stop next, whatever the upstream is doing."""
        self.inbox.put_nowait(STOPPED)

    async def accepted(self) -> bool:
        """True once the upstream has taken the request; False if a stop came first. A
        refusal raises its UpstreamError."""
        item = await self.inbox.first()
        if isinstance(item, BaseException):
            raise item
        return item is ACCEPTED

    async def __aenter__(self) -> UpstreamReader:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _read(self) -> None:
        try:
            async with self.provider.stream(self.request) as completion:
                self.inbox.put_nowait(ACCEPTED)
                async for delta in completion:
                    if not self.first_delta:
                        self.first_delta = time.monotonic()
                    self.inbox.put_nowait(delta)
                self.usage, self.finish_reason = completion.usage, completion.finish_reason
            self.inbox.put_nowait(END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the generation, which raises it in its own task
            self.inbox.put_nowait(exc)


class AnswerRelay:
    """Answers a generation: asks its model, publishes what comes back."""

    def __init__(self, settings: Settings, store: ConversationStore, broker: Broker,
                 provider_for: Callable[[str], Provider]) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.provider_for = provider_for
        self._window = settings.stream.batch_ms / 1000  # deltas closer together go out as one event

    async def answer(self, generation: Generation, answer: Answer) -> str:
        """Relay the model's answer into `answer`, published batch by batch; returns the
        done reason: "stop", "length" or "content_filter" (the model's), or "cancelled"
        when stopped (by the user, a limit, shutdown)."""
        reader = generation.reader  # asked already while the user message was saved (ask_early)
        if reader is None:
            if generation.stop_requested:
                return "cancelled"
            conversation = generation.conversation
            provider = self.provider_for(conversation.model)
            generation.prompt = await build_prompt(self.settings.llm, self.store, conversation, generation.answers,
                                                   with_reasoning=provider.sends_reasoning)
            reader = generation.reader = UpstreamReader(provider, self._request(conversation, generation.prompt),
                                                        self._window)
        provider = reader.provider
        try:
            async with reader:
                if generation.stop_requested or not await reader.accepted():
                    return "cancelled"  # stopped before the model took the request
                if generation.replaces is not None:  # taken off the screens; it stays, a sibling
                    generation.after_event_id = await announce_truncate(
                        self.broker, generation.conversation_id, generation.replaces, generation.replaces)
                    generation.replaced_hidden = True
                generation.settle(None)
                await self._relay(generation, reader, answer, UPSTREAM_FIRST_TOKEN_SECONDS.labels(provider.name))
            generation.usage = reader.usage
            return reader.finish_reason if reader.finish_reason in FINISH_REASONS else "stop"
        except Stopped:
            return "cancelled"
        except AnswerTooLong:
            logger.info("generation in conversation %d hit max_answer_chars", generation.conversation_id)
            generation.limit = "size"
            return "cancelled"
        except UpstreamError:
            UPSTREAM_ERRORS.labels(provider.name).inc()
            raise

    def ask_early(self, generation: Generation, text: str) -> UpstreamReader | None:
        """Ask the upstream for the answer to the user message `text` before it is saved
        (DESIGN.md, Generation lifecycle: the request goes while the save is in flight, and
        is closed if the save fails): when the prompt needs nothing read, the path kept in
        memory ending where the message goes. Else None: answer() asks once it is saved."""
        conversation = generation.conversation
        if generation.stop_requested:
            return None
        try:
            provider = self.provider_for(conversation.model)
            prompt = kept_prompt(self.settings.llm, self.store, conversation, text, provider.sends_reasoning)
            if prompt is None:
                return None
            request = self._request(conversation, prompt)
        except Exception:  # an unknown model, unreadable params: answer() meets it again and says so
            return None
        generation.prompt = prompt
        reader = UpstreamReader(provider, request, self._window)
        reader.start()
        return reader

    def _request(self, conversation: Conversation, prompt: tuple[ChatMessage, ...]) -> ChatRequest:
        return ChatRequest(model=conversation.model, messages=prompt,
                           api_key=self.store.box.open(conversation.api_key_sealed),
                           params=load_params(conversation.params), batch_window=self._window)

    async def _relay(self, generation: Generation, reader: UpstreamReader, answer: Answer,
                     first_token: Histogram) -> None:
        """Publish the deltas, batched (batching.py), until the answer ends, is stopped
        (Stopped), or reaches `max_answer_chars`, thinking included (it is cut there:
        AnswerTooLong)."""
        cid = generation.conversation_id
        room = self.settings.stream.max_answer_chars  # what the answer may still grow by
        # Closed at once (its timer with it) when the answer is cut short, not when collected.
        async with contextlib.aclosing(coalesce(reader.inbox)) as texts:
            async for text in texts:
                if not (answer.parts or answer.thoughts):  # the upstream's time, not the save's
                    first_token.observe((reader.first_delta or time.monotonic()) - reader.began)
                cut = len(text) >= room
                thinking = isinstance(text, Thought)
                text = text[:room]
                await self.broker.publish(cid, REASONING if thinking else MESSAGE, text)
                # Only what was published is part of the answer.
                (answer.thoughts if thinking else answer.parts).append(text)
                if cut:
                    raise AnswerTooLong()
                room -= len(text)
                # The in-process publish and the batches of one take never suspend: without
                # this, a fast upstream would fill every subscriber's queue before one sends.
                await asyncio.sleep(0)


class AnswerTooLong(Exception):
    """The answer reached stream.max_answer_chars; it is stopped there and saved."""
