"""What a model is sent (the system prompt and the newest history that fits the context
budget) and what an answer is counted as when the upstream gives no token counts."""
from __future__ import annotations

from realtime_llm.config import LlmSettings
from realtime_llm.providers import Attachment, ChatMessage
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.messages import IMAGE_COST_CHARS
from realtime_llm.store.paths import sent_as
from realtime_llm.store.records import Conversation, Message
from realtime_llm.usage import Usage

CHARS_PER_TOKEN = 4  # the budget is in tokens; this estimate avoids a tokenizer per model


async def build_prompt(settings: LlmSettings, store: ConversationStore, conversation: Conversation,
                       last: int, with_reasoning: bool = False) -> tuple[ChatMessage, ...]:
    """System prompt, then the newest messages of the branch ending at message `last` (the
    one to answer) that fit the context budget; `with_reasoning`: earlier answers' thinking
    goes too, and counts against the budget."""
    system, budget = _system_and_budget(settings, conversation)
    kept = store.messages.kept(conversation, budget, last, with_reasoning)
    if kept is not None:
        return ChatMessage("system", system), *kept.items
    history = await store.messages.recent(conversation, budget, last, with_reasoning=with_reasoning)
    return _prompt(system, history, with_reasoning)


def kept_prompt(settings: LlmSettings, store: ConversationStore, conversation: Conversation, text: str,
                with_reasoning: bool = False) -> tuple[ChatMessage, ...] | None:
    """build_prompt's prompt for a user message `text` about to be added at the end of the
    conversation's active branch (as `conversation` saw it), made before it is saved, from
    the prompt path kept in memory; None when that path is not kept (it must be read)."""
    system, budget = _system_and_budget(settings, conversation)
    kept = store.messages.kept(conversation, budget, conversation.active_leaf_id, with_reasoning,
                               newer=(Message(0, "user", text, 0),))
    return None if kept is None else (ChatMessage("system", system), *kept.items)


def _system_and_budget(settings: LlmSettings, conversation: Conversation) -> tuple[str, int]:
    system = conversation.system_prompt or settings.system_prompt
    return system, max(settings.context_budget_tokens * CHARS_PER_TOKEN - len(system), 1)


def _prompt(system: str, history: list[Message], with_reasoning: bool) -> tuple[ChatMessage, ...]:
    return (ChatMessage("system", system),
            *(ChatMessage(m.role, m.content, m.reasoning if with_reasoning else "", _attachments(m))
              if m.attachments else sent_as(m, with_reasoning) for m in history))


def _attachments(message: Message) -> tuple[Attachment, ...]:
    """A message's files as a model is given them."""
    return tuple(Attachment(f.name, f.content_type, f.size, f.data, f.text, f.width, f.height)
                 for f in message.attachments)


def answer_usage(reported: Usage | None, prompt: tuple[ChatMessage, ...], answer: str) -> Usage:
    """The upstream's counts when it gave them; else an estimate (4 characters a token)."""
    if reported is not None:
        return reported
    prompt_chars = sum(len(m.content) + len(m.reasoning) for m in prompt) + sum(
        IMAGE_COST_CHARS if a.is_image else len(a.name) + len(a.text) for m in prompt for a in m.attachments)
    return Usage(-(-prompt_chars // CHARS_PER_TOKEN), -(-len(answer) // CHARS_PER_TOKEN), estimated=True)
