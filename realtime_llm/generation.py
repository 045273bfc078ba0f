"""Generations: one model answer per conversation at a time, run on the server and published.

A generation belongs to no connection: the client that asked for it may leave, and every
subscriber of the conversation sees it. Its lifecycle is DESIGN.md's: save the user
message, publish it, stream deltas (batched), save the answer, publish `done` and
`full_response` — or `error`, with the user message kept.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, Awaitable, Callable, Coroutine

from prometheus_client import Histogram

from realtime_llm.batching import coalesce
from realtime_llm.broker import Broker
from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.catalog import ModelCatalog
from realtime_llm.config import Settings
from realtime_llm.errors import (
    DATABASE_ERRORS,
    BadRequest,
    Conflict,
    ConversationNotFound,
    ServiceUnavailable,
    database_error,
)
from realtime_llm.events import DONE, ERROR, MESSAGE, TRUNCATE, USER_MESSAGE
from realtime_llm.locks import kept_alive, take_lock
from realtime_llm.metrics import GENERATIONS, RUNNING_GENERATIONS, UPSTREAM_ERRORS, UPSTREAM_FIRST_TOKEN_SECONDS
from realtime_llm.prompt import answer_usage, build_prompt
from realtime_llm.providers import ChatMessage, ChatRequest, Provider, UpstreamError, Usage
from realtime_llm.store.conversations import Conversation, ConversationStore
from realtime_llm.titles import Titler

logger = logging.getLogger("realtime_llm.generation")

SAVE_PATIENCE_SECONDS = 60  # how long a finished answer waits out a busy or unreachable database


@dataclass
class Generation:
    """A running generation, as the code that started it sees it."""

    owner: str
    conversation: Conversation  # as it was when the generation started; writes are bound to it
    # This generation's events are the conversation's events after this id.
    after_event_id: int = 0
    replaces: int | None = None  # regenerate: the answer dropped once the model accepts
    prompt: tuple[ChatMessage, ...] = ()
    usage: Usage | None = None  # the upstream's, once its stream has ended
    # Resolves once the upstream has accepted the request (None) or refused it (the reason).
    accepted: asyncio.Future[str | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    stop_requested: bool = False
    limit: str | None = None  # "time" or "size": stopped by the server's own cap
    finishing: bool = False
    saved: bool = False  # the answer is in SQL: never save it again
    task: asyncio.Task[None] | None = None

    @property
    def conversation_id(self) -> int:
        return self.conversation.id

    def settle(self, refusal: str | None) -> None:
        if not self.accepted.done():
            self.accepted.set_result(refusal)


class GenerationEngine:
    """Starts generations and owns their tasks: closing the engine stops them all."""

    def __init__(
        self,
        settings: Settings,
        store: ConversationStore,
        broker: Broker,
        providers: dict[str, Provider],
        catalog: ModelCatalog,
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.providers = providers
        self.catalog = catalog
        self.process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._running: dict[int, Generation] = {}
        self._starting = 0  # start() calls past the draining check, not yet in _running
        self._helpers: set[asyncio.Task[None]] = set()
        self.titles = Titler(settings, store, broker, self.provider_for)
        self.draining = False

    async def start(self, conversation: Conversation, text: str, edit_message_id: int | None = None) -> Generation:
        """Save and publish the user message and start the answer. With `edit_message_id`,
        that user message and everything after it are dropped first (edit and resend)."""
        async def add_message(generation: Generation) -> None:
            cid = generation.conversation_id
            after = None
            if edit_message_id is not None:
                edited = await self.store.message(cid, edit_message_id)
                if edited is None or edited.role != "user":
                    raise BadRequest("'edit_message_id' must name a user message of this conversation")
                after = await self._truncate(cid, edit_message_id)
            message = await self.store.add_message(conversation, "user", text)
            event = await self.broker.publish(cid, USER_MESSAGE, text, message_id=message.message_id)
            generation.after_event_id = event.id - 1 if after is None else after

        return await self._begin(conversation, add_message)

    async def regenerate(self, conversation: Conversation) -> Generation:
        """Replace the last answer with a new one to the same prompt (after a failed answer:
        answer the last user message). The old answer goes only once the model has accepted
        the new request, so a refusal (a 502) leaves the conversation as it was."""
        async def find_last_answer(generation: Generation) -> None:
            cid = generation.conversation_id
            last = await self.store.last_message(cid)
            if last is None:
                raise Conflict("there is nothing to regenerate: the conversation has no messages")
            if last.role == "assistant":
                generation.replaces = last.message_id
            generation.after_event_id = await self.broker.last_event_id(cid)

        return await self._begin(conversation, find_last_answer)

    async def _truncate(self, cid: int, from_message_id: int) -> int:
        """Drop messages from `from_message_id` on, in SQL and in the replay buffer, and tell
        subscribers with a `truncate` event (`through_message_id`: the last one dropped, so
        a client can apply it twice); returns the id before it. The buffer is emptied so
        that a client resuming never replays old turns next to new ones."""
        last = await self.store.last_message(cid)
        through = last.message_id if last is not None else from_message_id
        await self.store.drop_messages_from(cid, from_message_id)
        await self.broker.clear_replay(cid)
        event = await self.broker.publish(cid, TRUNCATE, "", from_message_id=from_message_id,
                                          through_message_id=through)
        return event.id - 1

    async def _begin(self, conversation: Conversation, prepare: Callable[[Generation], Awaitable[None]]) -> Generation:
        if self.draining:
            raise ServiceUnavailable("this server is shutting down: send the message again to reach another")
        self._starting += 1  # drain() waits for this start too
        try:
            return await self._start(conversation, prepare)
        finally:
            self._starting -= 1

    async def _start(self, conversation: Conversation, prepare: Callable[[Generation], Awaitable[None]]) -> Generation:
        """Take the conversation's lock, then (under it) `prepare` the history and publish
        what comes before the answer, setting the event id the answer follows."""
        cid = conversation.id
        owner = f"{self.process_id}:{uuid.uuid4().hex[:8]}"
        if not await take_lock(self.broker, cid, owner, self.settings.stream.lock_ttl_seconds):
            raise Conflict("a generation is already running in this conversation")
        generation = Generation(owner, conversation)
        # Listen for stop before anyone can know the generation exists (the user_message
        # below), so a stop sent the moment it appears is never lost.
        listening = contextlib.AsyncExitStack()
        try:
            await listening.enter_async_context(self.broker.on_stop(cid, lambda: self._stop(generation)))
            await prepare(generation)
        except BaseException:
            await listening.aclose()
            await self.broker.release_lock(cid, owner)
            raise
        self._running[cid] = generation
        generation.task = asyncio.create_task(self._run(generation, listening), name=f"generation-{cid}")
        return generation

    async def drain(self, grace: float, cut_short: Callable[[], bool] = lambda: False) -> None:
        """Refuse new generations and give the running ones `grace` seconds to finish (less
        if `cut_short()` turns true: a second Ctrl-C); then stop the rest, each saving its
        partial answer."""
        self.draining = True
        if self._running:
            logger.info("waiting up to %.0fs for %d running generation(s)", grace, len(self._running))
        deadline = time.monotonic() + grace
        while (self._running or self._starting) and time.monotonic() < deadline and not cut_short():
            await asyncio.sleep(0.05)
        await self.close()

    def running_conversations(self) -> set[int]:
        return set(self._running)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """A helper task owned by the engine (titles): close() cancels what is still running."""
        task = asyncio.create_task(work)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    async def close(self, grace: float = 5.0) -> None:
        """Stop every running generation (each saves its partial answer) and wait for them."""
        helpers = list(self._helpers)
        for helper in helpers:
            helper.cancel()
        if helpers:  # nothing may outlive the providers, broker and database it uses
            await asyncio.wait(helpers, timeout=1.0)
        generations = list(self._running.values())
        for generation in generations:
            self._stop(generation)
        tasks = [g.task for g in generations if g.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:  # nothing may outlive the broker and database it uses
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    def _stop(self, generation: Generation) -> None:
        if generation.stop_requested or generation.finishing:
            return
        generation.stop_requested = True
        if generation.task is not None:  # else _stream_answer sees the flag when it begins
            generation.task.cancel()

    async def _run(self, generation: Generation, listening: contextlib.AsyncExitStack) -> None:
        cid = generation.conversation_id
        parts: list[str] = []
        outcome = "error"
        RUNNING_GENERATIONS.inc()
        try:
            kept = kept_alive(self.broker, cid, generation.owner, self.settings.stream.lock_ttl_seconds,
                              on_lost=lambda: self._stop(generation))
            async with listening, kept:
                reason = await self._stream_answer(generation, parts)
                await self._finish(generation, "".join(parts), reason, deltas=len(parts))
                outcome = reason
            conversation = generation.conversation
            if outcome == "stop" and not conversation.title and self.settings.llm.auto_titles:
                self._spawn(self.titles.give_title(conversation, generation.prompt, "".join(parts)))
        except UpstreamError as exc:
            generation.settle(str(exc))
            await self._publish_error(generation, str(exc))
        except BrokerUnavailable:
            # Nobody can be told (subscribers got their error from the broker itself), but
            # the answer so far is not lost: SQL does not need the broker.
            logger.warning("broker unavailable during the answer in conversation %d; saving it", cid)
            if not generation.saved:
                await self._save_quietly(generation, "".join(parts))
        except asyncio.CancelledError:
            if not generation.stop_requested:
                raise
            # Stopped before the stream began: still end it properly for subscribers.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            generation.finishing = True
            await self._finish(generation, "".join(parts), "cancelled", deltas=len(parts))
            outcome = "cancelled"
        except Exception as exc:  # a bug, or a database down for good: still end the stream
            logger.exception("generation failed in conversation %d", cid)
            generation.settle("internal error")
            await self._publish_error(generation, "the answer could not be saved: the database is unavailable"
                                      if database_error(exc) else "the answer failed because of an internal error")
        finally:
            RUNNING_GENERATIONS.dec()
            GENERATIONS.labels(outcome).inc()
            generation.settle(None)  # stopped before the upstream answered: stream what there is
            self._running.pop(cid, None)
            await self._release(generation)

    async def _stream_answer(self, generation: Generation, parts: list[str]) -> str:
        """Relay the model's deltas; returns the done reason. A stop cancels this task, and
        the cancellation is absorbed here so that the partial answer can still be saved."""
        conversation = generation.conversation
        try:
            if generation.stop_requested:
                return "cancelled"
            async with asyncio.timeout(self.settings.stream.max_generation_seconds):
                generation.prompt = await build_prompt(self.settings.llm, self.store, conversation,
                                                       below=generation.replaces)
                request = ChatRequest(
                    model=conversation.model,
                    messages=generation.prompt,
                    api_key=self.store.box.open(conversation.api_key_sealed),
                )
                provider = self.provider_for(conversation.model)
                began = time.monotonic()
                try:
                    async with provider.stream(request) as completion:
                        if generation.replaces is not None:
                            generation.after_event_id = await self._truncate(generation.conversation_id,
                                                                             generation.replaces)
                        generation.settle(None)
                        await self._relay(generation.conversation_id, completion, parts,
                                          UPSTREAM_FIRST_TOKEN_SECONDS.labels(provider.name), began)
                        generation.usage = completion.usage
                except UpstreamError:
                    UPSTREAM_ERRORS.labels(provider.name).inc()
                    raise
            return "stop"
        except asyncio.CancelledError:
            if not generation.stop_requested:
                raise  # shutdown or another outside cancel: not ours to absorb
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return "cancelled"
        except TimeoutError:
            logger.info("generation in conversation %d hit max_generation_seconds", generation.conversation_id)
            generation.limit = "time"
            return "cancelled"
        except AnswerTooLong:
            logger.info("generation in conversation %d hit max_answer_chars", generation.conversation_id)
            generation.limit = "size"
            return "cancelled"
        finally:
            generation.finishing = True  # from here on a stop has nothing left to interrupt

    async def _relay(self, cid: int, deltas: AsyncIterable[str], parts: list[str],
                     first_token: Histogram, began: float) -> None:
        """Publish the deltas, batched (batching.py), until the answer ends or reaches
        `max_answer_chars` (it is cut there: AnswerTooLong)."""
        room = self.settings.stream.max_answer_chars  # what the answer may still grow by
        async for text in coalesce(deltas, self.settings.stream.batch_ms / 1000):
            if not parts:
                first_token.observe(time.monotonic() - began)
            if len(text) >= room:
                await self._publish_delta(cid, text[:room], parts)
                raise AnswerTooLong()
            await self._publish_delta(cid, text, parts)
            room -= len(text)

    async def _publish_delta(self, cid: int, text: str, parts: list[str]) -> None:
        """Publish a delta and count it as part of the answer. Only what was published is
        part of it, so full_response is always the concatenation of the message events,
        even after a stop. A stop that lands while the event is on its way (with Redis: the
        script may have run) lets the publish finish first, and counts it if it went out."""
        publishing = asyncio.ensure_future(self.broker.publish(cid, MESSAGE, text))
        try:
            await asyncio.shield(publishing)
        except asyncio.CancelledError:
            await asyncio.wait({publishing}, timeout=2.0)
            if publishing.done() and not publishing.cancelled() and publishing.exception() is None:
                parts.append(text)
            else:
                publishing.cancel()
            raise
        parts.append(text)  # one part per message event

    async def _finish(self, generation: Generation, answer: str, reason: str, deltas: int = 0) -> None:
        """Save the answer, then publish done and full_response (made of the `deltas`
        message events the answer went out as)."""
        cid = generation.conversation_id
        usage: Usage | None = None
        try:
            if answer or reason == "stop":
                usage = answer_usage(generation.usage, generation.prompt, answer)
                saved = await self._save_answer(generation, answer, usage)
                generation.saved = True
                message_id: int | None = saved.message_id
            elif await self.store.exists(cid):  # ids are never reused: the id alone is this one
                message_id = None
            else:
                raise ConversationNotFound()
        except ConversationNotFound:
            return  # deleted mid-answer: nothing to save and nobody left to tell
        meta: dict[str, Any] = {"message_id": message_id} if message_id is not None else {}
        usage_meta = {"usage": usage.as_json()} if usage is not None else {}
        limit_meta = {"limit": generation.limit} if generation.limit is not None else {}
        await self.broker.publish(cid, DONE, "Stream finished", reason=reason, **limit_meta, **meta, **usage_meta)
        await self.broker.publish_answer(cid, answer, generation.after_event_id, deltas, **meta)

    async def _save_quietly(self, generation: Generation, answer: str) -> None:
        cid = generation.conversation_id
        if not answer:
            return
        try:
            await self._save_answer(generation, answer, answer_usage(generation.usage, generation.prompt, answer))
        except ConversationNotFound:
            pass  # deleted meanwhile: nothing to save
        except Exception:
            logger.exception("could not save the partial answer of conversation %d", cid)

    async def _save_answer(self, generation: Generation, answer: str, usage: Usage) -> Any:
        """Save an answer, waiting out a busy or unreachable database for up to
        SAVE_PATIENCE_SECONDS: once the generation ends the answer exists nowhere else."""
        deadline = time.monotonic() + SAVE_PATIENCE_SECONDS
        pause = 0.1
        cid = generation.conversation_id
        while True:
            try:
                return await self.store.add_message(generation.conversation, "assistant", answer, usage)
            except DATABASE_ERRORS as exc:
                if database_error(exc) is None or time.monotonic() + pause > deadline:
                    raise
                logger.warning("answer of conversation %d not saved yet (%s); retrying", cid, type(exc).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _publish_error(self, generation: Generation, message: str) -> None:
        try:
            await self.broker.publish(generation.conversation_id, ERROR, message)
        except BrokerUnavailable:
            logger.warning("could not publish the error of conversation %d", generation.conversation_id)
        except Exception:
            logger.exception("could not publish the error of conversation %d", generation.conversation_id)

    async def _release(self, generation: Generation) -> None:
        """Free the conversation at once: a client may send its next message the moment it
        sees full_response. (Event ids need no saving: the broker reserves them in SQL.)"""
        await self.broker.release_lock(generation.conversation_id, generation.owner)

    def provider_for(self, model: str) -> Provider:
        settings = self.catalog.provider_for(model)
        if settings is None:
            raise UpstreamError(f"model {model!r} is no longer served here")
        return self.providers[settings.name]


class AnswerTooLong(Exception):
    """The answer reached stream.max_answer_chars; it is stopped there and saved."""
