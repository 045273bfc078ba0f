"""What a generation leaves behind: the saved answer (waiting out a busy database), then
`done` and `full_response` for its subscribers; or, when it failed, an `error`."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from realtime_llm.branches import announce_branch
from realtime_llm.broker import Broker
from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.broker.eventids import Gathered
from realtime_llm.errors import DATABASE_ERRORS, ConversationNotFound, database_error
from realtime_llm.events import DONE, ERROR, FULL_RESPONSE, MESSAGE, REASONING
from realtime_llm.prompt import answer_usage
from realtime_llm.relay import Answer
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.records import Message
from realtime_llm.usage import Usage

if TYPE_CHECKING:
    from realtime_llm.generation import Generation

logger = logging.getLogger("realtime_llm.generation")

SAVE_PATIENCE_SECONDS = 60  # how long a finished answer waits out a busy or unreachable database


class Outcome:
    """Saves and announces the end of the generations of one engine."""

    def __init__(self, store: ConversationStore, broker: Broker) -> None:
        self.store = store
        self.broker = broker

    async def finish(self, generation: Generation, answer: Answer, reason: str) -> None:
        """Save the answer (its thinking with it), then publish done (which carries the
        thinking) and full_response (made of the answer's message events). A conversation
        deleted meanwhile: nothing is saved, and nobody is left to tell."""
        cid = generation.conversation_id
        text, reasoning = answer.text, answer.reasoning
        usage: Usage | None = None
        try:
            if text or reasoning or reason != "cancelled":
                usage = answer_usage(generation.usage, generation.prompt, text + reasoning)
                message_id: int | None = (await self.save(generation, answer, usage)).message_id
            elif await self.store.exists(cid):  # ids are never reused: the id alone is this one
                message_id = None
                await self.keep_replaced(generation)
            else:
                return
        except ConversationNotFound:
            return
        meta: dict[str, Any] = {"message_id": message_id} if message_id is not None else {}
        usage_meta = {"usage": usage.as_json()} if usage is not None else {}
        stopped_by_limit = reason == "cancelled" and generation.limit is not None  # a cap that came too late: none
        limit_meta = {"limit": generation.limit} if stopped_by_limit else {}
        after = generation.after_event_id  # both long strings are built from the events after it
        await self.broker.publish_gathered(cid, DONE, "Stream finished",
                                           Gathered("reasoning", REASONING, after, len(answer.thoughts)),
                                           reason=reason, reasoning=reasoning, **limit_meta, **meta, **usage_meta)
        await self.broker.publish_gathered(cid, FULL_RESPONSE, text,
                                           Gathered("data", MESSAGE, after, len(answer.parts)), **meta)

    async def save(self, generation: Generation, answer: Answer, usage: Usage) -> Message:
        """Save an answer under the message it answers, waiting out a busy or unreachable
        database for up to SAVE_PATIENCE_SECONDS: once the generation ends the answer
        exists nowhere else."""
        conversation = generation.conversation
        deadline = time.monotonic() + SAVE_PATIENCE_SECONDS
        pause = 0.1
        while True:
            try:
                saved = await self.store.messages.add(conversation, "assistant", answer.text, usage,
                                                     reasoning=answer.reasoning, parent_id=generation.answers)
                generation.saved = True
                return saved
            except DATABASE_ERRORS as exc:
                if database_error(exc) is None or time.monotonic() + pause > deadline:
                    raise
                logger.warning("answer of conversation %d not saved yet (%s); retrying", conversation.id,
                               type(exc).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def keep_replaced(self, generation: Generation) -> None:
        """A new version of an answer that comes to nothing: the old one is still the end of
        the branch, and the subscribers that were told to take it away are told to re-read
        (before `done` or `error`, so a stream that ends there sees it too)."""
        if generation.replaced_hidden and not generation.saved and generation.replaces is not None:
            await announce_branch(self.broker, generation.conversation_id, generation.replaces, generation.replaces)

    async def save_quietly(self, generation: Generation, answer: Answer) -> None:
        """What there is of an answer whose end nobody can be told of (the broker is away)."""
        if not (answer.parts or answer.thoughts) or generation.saved:
            return
        try:
            usage = answer_usage(generation.usage, generation.prompt, answer.text + answer.reasoning)
            await self.save(generation, answer, usage)
        except ConversationNotFound:
            pass  # deleted meanwhile: nothing to save
        except Exception:
            logger.exception("could not save the partial answer of conversation %d", generation.conversation_id)

    async def fail(self, generation: Generation, message: str) -> None:
        """Tell the subscribers the answer failed (the user message stays)."""
        conversation_id = generation.conversation_id
        try:
            await self.keep_replaced(generation)
            await self.broker.publish(conversation_id, ERROR, message)
        except BrokerUnavailable:
            logger.warning("could not publish the error of conversation %d", conversation_id)
        except Exception:
            logger.exception("could not publish the error of conversation %d", conversation_id)
