"""Automatic titles: an untitled conversation gets one after its first answer.

The conversation's own model is asked for a few words (a short, non-essential request with
a time limit); the demo model, a model that fails or says nothing usable, gets a title cut
from the first message instead. The title is written only if the conversation is still
untitled, so a title the user sets is never overwritten, and a `title` event tells every
subscriber.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Callable

from realtime_llm.broker import Broker
from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.config import Settings
from realtime_llm.events import TITLE
from realtime_llm.providers import ChatMessage, ChatRequest, Provider, Thought, UpstreamError
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.records import Conversation

logger = logging.getLogger("realtime_llm.titles")

TITLE_TIMEOUT = 15.0
TITLE_WORDS = 8
TITLE_CHARS = 60
EXCERPT_CHARS = 1000  # of the question and the answer, sent to the model
INSTRUCTION = (
    "Write a title of at most six words for the conversation below. "
    "Answer with the title only: no quotes, no final punctuation."
)


class Titler:
    def __init__(self, settings: Settings, store: ConversationStore, broker: Broker,
                 provider_for: Callable[[str], Provider]) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.provider_for = provider_for

    async def give_title(self, conversation: Conversation, prompt: tuple[ChatMessage, ...], answer: str) -> None:
        question = next((m.content for m in prompt if m.role == "user"), "")
        try:
            title = await self._ask_model(conversation, question, answer) or title_from_text(question)
            title = title[: self.settings.limits.max_title_chars] or "New conversation"
            if await self.store.set_title_if_untitled(conversation, title):  # deleted since: not written
                await self.broker.publish(conversation.id, TITLE, title)
        except BrokerUnavailable:
            logger.info("title of conversation %d saved, but not announced: broker unavailable", conversation.id)
        except asyncio.CancelledError:
            raise
        except Exception:  # a title is a nicety: never let it disturb anything else
            logger.exception("could not title conversation %d", conversation.id)

    async def _ask_model(self, conversation: Conversation, question: str, answer: str) -> str | None:
        try:
            provider = self.provider_for(conversation.model)
        except UpstreamError:
            return None
        if not provider.can_title:
            return None
        request = ChatRequest(
            model=conversation.model,
            messages=(
                ChatMessage("system", INSTRUCTION),
                ChatMessage("user", f"User: {question[:EXCERPT_CHARS]}\n\nAssistant: {answer[:EXCERPT_CHARS]}"),
            ),
            api_key=self.store.box.open(conversation.api_key_sealed),
            max_tokens=24,
        )
        parts: list[str] = []
        try:
            async with asyncio.timeout(TITLE_TIMEOUT):
                async with provider.stream(request) as completion:
                    async for delta in completion:
                        if isinstance(delta, Thought):  # a reasoning model's thinking is no title
                            continue
                        parts.append(delta)
                        if sum(map(len, parts)) > 4 * TITLE_CHARS:
                            break
        except (UpstreamError, TimeoutError) as exc:
            logger.info("model gave no title for conversation %d (%s)", conversation.id, exc)
            return None
        return clean_title("".join(parts))


def clean_title(text: str) -> str | None:
    """A model's answer as a title: its first line, unquoted, without a trailing period."""
    line = next((line for line in text.strip().splitlines() if line.strip()), "")
    line = re.sub(r"^(title:\s*)", "", line.strip(), flags=re.IGNORECASE)
    line = line.strip().strip("\"'`*#").strip().rstrip(".").strip()
    return shorten(line) or None


def title_from_text(text: str) -> str:
    """The first words of a message (its first non-empty line)."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    return shorten(line)


def shorten(text: str) -> str:
    words = " ".join(text.split()).split(" ")
    title = " ".join(words[:TITLE_WORDS])
    if len(title) > TITLE_CHARS:
        title = title[:TITLE_CHARS].rsplit(" ", 1)[0] if " " in title[:TITLE_CHARS] else title[:TITLE_CHARS]
    if title != " ".join(words):
        title += "…"
    return title.strip() if title.strip() != "…" else ""
