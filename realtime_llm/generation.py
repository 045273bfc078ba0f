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
from typing import Any, Awaitable, Callable, Coroutine, Sequence

from realtime_llm import turns
from realtime_llm.broker import Broker, GenerationLocks
from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.catalog import ModelCatalog
from realtime_llm.config import Settings
from realtime_llm.errors import Conflict, ServiceUnavailable, database_error
from realtime_llm.locks import kept_alive, take_lock
from realtime_llm.metrics import GENERATIONS, RUNNING_GENERATIONS
from realtime_llm.outcome import Outcome
from realtime_llm.providers import ChatMessage, Provider, UpstreamError
from realtime_llm.relay import Answer, AnswerRelay, UpstreamReader
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.files import StoredFile
from realtime_llm.store.records import Conversation
from realtime_llm.titles import Titler
from realtime_llm.usage import Usage

logger = logging.getLogger("realtime_llm.generation")


@dataclass
class Generation:
    """A running generation, as the code that started it sees it."""

    owner: str
    conversation: Conversation  # as it was when the generation started; writes are bound to it
    # This generation's events are the conversation's events after this id.
    after_event_id: int = 0
    answers: int = 0  # the user message the answer is to: its parent, where the prompt ends
    replaces: int | None = None  # regenerate: the answer the new one is another version of
    replaced_hidden: bool = False  # subscribers were told to take the replaced answer away
    prompt: tuple[ChatMessage, ...] = ()
    usage: Usage | None = None  # the upstream's, once its stream has ended
    # Resolves once the upstream has accepted the request (None) or refused it (the reason).
    accepted: asyncio.Future[str | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    stop_requested: bool = False
    limit: str | None = None  # "time" or "size": stopped by the server's own cap
    reader: UpstreamReader | None = None  # the upstream's answer, once it is asked
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
        locks: GenerationLocks,
        providers: dict[str, Provider],
        catalog: ModelCatalog,
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.locks = locks
        self.providers = providers
        self.catalog = catalog
        self.process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._running: dict[int, Generation] = {}
        self._starting = 0  # start() calls past the draining check, not yet in _running
        self._asking: dict[str, Generation] = {}  # by owner: starts whose upstream was asked before their save ended
        self._helpers: set[asyncio.Task[None]] = set()
        self.titles = Titler(settings, store, broker, self.provider_for)
        self.outcome = Outcome(store, broker)
        self.relay = AnswerRelay(settings, store, broker, self.provider_for)
        self.draining = False

    async def start(self, conversation: Conversation, text: str, edit_message_id: int | None = None,
                    attachments: Sequence[StoredFile] | None = None) -> Generation:
        """Save and publish the user message (turns.user_message) and start the answer."""
        plain = edit_message_id is None and not attachments  # its prompt may be the kept path and it
        return await self._begin(conversation, lambda: turns.user_message(
            self.store, self.broker, conversation, text, edit_message_id=edit_message_id, attachments=attachments,
            reads_images=self.catalog.reads_images(conversation.model)), text if plain else None)

    async def regenerate(self, conversation: Conversation) -> Generation:
        """A new version of the last answer on the active branch (turns.last_answer), to the
        same prompt. Subscribers are told to take the old one away only once the model has
        accepted the new request, so a refusal (a 502) leaves the conversation as it was;
        the old one stays, as a sibling."""
        return await self._begin(conversation, lambda: turns.last_answer(self.store, self.broker, conversation))

    async def _begin(self, conversation: Conversation, prepare: Callable[[], Awaitable[turns.Turn]],
                     question: str | None = None) -> Generation:
        if self.draining:
            raise ServiceUnavailable("this server is shutting down: send the message again to reach another")
        self._starting += 1  # drain() waits for this start too
        try:
            return await self._start(conversation, prepare, question)
        finally:
            self._starting -= 1

    async def _start(self, conversation: Conversation, prepare: Callable[[], Awaitable[turns.Turn]],
                     question: str | None) -> Generation:
        """Take the conversation's lock, then (under it) `prepare` the turn (turns.py):
        what comes before the answer, and the event id the answer follows. With `question`
        (a new user message at the end of the active branch) the upstream may be asked
        while it is saved (AnswerRelay.ask_early); that request is closed if the save fails,
        or if the message went under another leaf than `conversation` saw (a switch of
        branch meanwhile: the prompt is then made again)."""
        cid = conversation.id
        owner = f"{self.process_id}:{uuid.uuid4().hex[:8]}"
        if not await take_lock(self.locks, cid, owner, self.settings.stream.lock_ttl_seconds):
            raise Conflict("a generation is already running in this conversation")
        generation = Generation(owner, conversation)
        # Listen for stop before anyone can know the generation exists (the user_message
        # below), so a stop sent the moment it appears is never lost.
        listening = contextlib.AsyncExitStack()
        try:
            await listening.enter_async_context(self.locks.on_stop(cid, lambda: self.stop(generation)))
            if question is not None:
                generation.reader = self.relay.ask_early(generation, question)
                self._asking[owner] = generation
            turn = await prepare()
            if generation.reader is not None and turn.parent != conversation.active_leaf_id:
                self._forget_reader(generation)
        except BaseException:
            self._forget_reader(generation)
            await listening.aclose()
            await self.locks.release(cid, owner)
            raise
        finally:
            self._asking.pop(owner, None)
        generation.answers, generation.replaces = turn.answers, turn.replaces
        generation.after_event_id = turn.after_event_id
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
        for starting in list(self._asking.values()):  # still saving their user message: no answer will be read
            self._forget_reader(starting)
        generations = list(self._running.values())
        for generation in generations:
            self.stop(generation)
        tasks = [g.task for g in generations if g.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:  # nothing may outlive the broker and database it uses
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    def stop(self, generation: Generation, limit: str | None = None) -> None:
        """Stop the answer where it is (it is saved as far as it went); `limit` names the
        server's own cap that stopped it. Cooperative: only the upstream reader is
        interrupted, never a publish or a save (relay.py)."""
        if generation.stop_requested:
            return
        if limit is not None:
            logger.info("generation in conversation %d hit its %s limit", generation.conversation_id, limit)
        generation.stop_requested = True
        generation.limit = limit
        if generation.reader is not None:  # else AnswerRelay.answer sees the flag before it opens one
            generation.reader.stop()

    async def _run(self, generation: Generation, listening: contextlib.AsyncExitStack) -> None:
        cid = generation.conversation_id
        answer = Answer()  # what has been published of it
        outcome = "error"
        RUNNING_GENERATIONS.inc()
        deadline = asyncio.get_running_loop().call_later(self.settings.stream.max_generation_seconds,
                                                         self.stop, generation, "time")
        try:
            kept = kept_alive(self.locks, cid, generation.owner, self.settings.stream.lock_ttl_seconds,
                              on_lost=lambda: self.stop(generation))
            async with listening, kept:
                reason = await self.relay.answer(generation, answer)
                deadline.cancel()
                await self.outcome.finish(generation, answer, reason)
                outcome = reason
            conversation = generation.conversation
            if outcome != "cancelled" and not conversation.title and self.settings.llm.auto_titles:
                self._spawn(self.titles.give_title(conversation, generation.prompt, answer.text))
        except UpstreamError as exc:
            generation.settle(str(exc))
            await self.outcome.fail(generation, str(exc))
        except BrokerUnavailable:
            # Nobody can be told (subscribers got their error from the broker itself), but
            # the answer so far is not lost: SQL does not need the broker.
            logger.warning("broker unavailable during the answer in conversation %d; saving it", cid)
            await self.outcome.save_quietly(generation, answer)
        except asyncio.CancelledError:  # shutdown, past the grace: keep what there is, then go
            await self.outcome.save_quietly(generation, answer)
            raise
        except Exception as exc:  # a bug, or a database down for good: still end the stream
            logger.exception("generation failed in conversation %d", cid)
            generation.settle("internal error")
            await self.outcome.fail(generation, "the answer could not be saved: the database is unavailable"
                                    if database_error(exc) else "the answer failed because of an internal error")
        finally:
            if generation.reader is not None:  # closed by answer(), unless a failure came before it
                generation.reader.cancel()
            deadline.cancel()
            RUNNING_GENERATIONS.dec()
            GENERATIONS.labels(outcome).inc()
            generation.settle(None)  # stopped before the upstream answered: stream what there is
            self._running.pop(cid, None)
            await self._release(generation)

    @staticmethod
    def _forget_reader(generation: Generation) -> None:
        """Close an upstream request asked early whose answer will not be read (without
        waiting: nothing may hold up the lock's release or the answer's start)."""
        if generation.reader is not None:
            reader, generation.reader, generation.prompt = generation.reader, None, ()
            reader.cancel()

    async def _release(self, generation: Generation) -> None:
        """Free the conversation at once: a client may send its next message the moment it
        sees full_response. (Event ids need no saving: the broker reserves them in SQL.)"""
        await self.locks.release(generation.conversation_id, generation.owner)

    def provider_for(self, model: str) -> Provider:
        settings = self.catalog.provider_for(model)
        if settings is None:
            raise UpstreamError(f"model {model!r} is no longer served here")
        return self.providers[settings.name]
