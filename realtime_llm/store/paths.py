"""The prompt's path up a conversation's branch, kept in memory from one turn to the next.

A message never changes once written and its parent is fixed, so the path from a message
up to the first one stays the same while the conversation exists; and ids are never
reused (a deleted conversation's id is not handed out again, nor a message id within a
conversation). So the next turn's path is the last one's with the new messages under it:
a few rows read up from the new leaf, to the last leaf, instead of the whole branch
(bench.relay_overhead, a conversation of 120 short messages: the prompt's read took
0.7 ms of the 2.7 ms the server added to the first token). Several processes each keep
their own: nothing here can go stale.

Only paths of messages without files are kept (a prompt reads a file's text or image
with it, and a file may be deleted). Bounded in bytes held; the least recently used
conversation goes first.

A path keeps each message as a model is sent it too (`items`), made once as it joins the
path: made afresh every turn, a long conversation's prompt was that many new objects, each
alive for the whole answer, so the collector's young generations walked them at every
pass (bench.peers at 50 streams: 12,000 of the 31,000 objects a middle-generation
collection walked, and each such pass held the event loop for 30-60 ms).
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from realtime_llm.providers.base import ChatMessage
from realtime_llm.store.records import Message

MAX_COST = 8 * 1024 * 1024  # bytes: the texts held, plus MESSAGE_COST a message
# What a Message (its usage, its numbers) and its ChatMessage take in memory beside their
# texts (which they share): about 200 and 73 (tracemalloc).
MESSAGE_COST = 330
MAX_PATHS = 10_000


@dataclass(frozen=True)
class PromptPath:
    """The newest messages of the branch ending at `leaf`, oldest first, that fit in
    `budget` characters (their thinking counted when `with_reasoning`), chosen as
    MessageStore.recent chooses; `complete`: nothing older was left out. `owner`: the
    conversation's, checked on every use, so that not even an id handed out twice could
    give one user's messages to another's prompt. `used`: their text_size in all; `cost`:
    about the bytes they hold (held()). Both are kept as the path grows, so that a turn
    walks only its new messages in Python (the path's tuple is still copied, in C), not
    the whole path again (walking a path of 170 short messages to extend it and count its
    cost took about 150 µs a turn)."""

    owner: int
    leaf: int
    messages: tuple[Message, ...]
    items: tuple[ChatMessage, ...]  # the same, as sent to a model (sent_as)
    budget: int
    with_reasoning: bool
    complete: bool
    used: int
    cost: int

    def covers(self, owner: int, budget: int, with_reasoning: bool) -> bool:
        """Whether `owner`'s choice within `budget` is a part of this one."""
        return (owner == self.owner and with_reasoning == self.with_reasoning
                and (self.complete or budget <= self.budget))


def read_path(owner: int, leaf: int, messages: tuple[Message, ...], budget: int, with_reasoning: bool,
              complete: bool) -> PromptPath:
    """A path chosen from a whole read: its sums counted here, once."""
    return PromptPath(owner, leaf, messages, tuple(sent_as(m, with_reasoning) for m in messages), budget,
                      with_reasoning, complete, sum(text_size(m, with_reasoning) for m in messages),
                      sum(map(held, messages)))


def sent_as(message: Message, with_reasoning: bool) -> ChatMessage:
    """A message without files as a model is sent it (its thinking only `with_reasoning`)."""
    return ChatMessage(message.role, message.content, message.reasoning if with_reasoning else "")


def text_size(message: Message, with_reasoning: bool) -> int:
    """What a message counts for in the budget, its files aside."""
    return len(message.content) + (len(message.reasoning) if with_reasoning else 0)


def held(message: Message) -> int:
    """About the bytes a message holds: a text's in memory (1, 2 or 4 a character), not its length."""
    return sys.getsizeof(message.content) + sys.getsizeof(message.reasoning) + MESSAGE_COST


def extend(newer: Sequence[Message], cached: PromptPath, leaf: int, budget: int) -> PromptPath:
    """The path to `leaf`: `newer` (newest first, ending just under the cached leaf) over
    `cached`, chosen within `budget` as if read whole: the newest that fit, the newest
    always. So the oldest go until the rest fit. (Every message a fresh choice would take
    fits in `budget` <= cached.budget, so the cached choice holds it; the first one it
    leaves out did not fit in the cached budget, so it does not fit now.)"""
    with_reasoning = cached.with_reasoning
    added = tuple(reversed(newer))
    messages = cached.messages + added
    items = cached.items + tuple(sent_as(m, with_reasoning) for m in added)
    used = cached.used + sum(text_size(m, with_reasoning) for m in added)
    cost = cached.cost + sum(map(held, added))
    first = 0
    while used > budget and first < len(messages) - 1:
        used -= text_size(messages[first], with_reasoning)
        cost -= held(messages[first])
        first += 1
    return PromptPath(cached.owner, leaf, messages[first:] if first else messages,
                      items[first:] if first else items, budget, with_reasoning, cached.complete and not first, used,
                      cost)


class PathCache:
    """The last prompt path of each conversation, in this process."""

    def __init__(self, max_cost: int = MAX_COST, max_paths: int = MAX_PATHS) -> None:
        self.max_cost = max_cost
        self.max_paths = max_paths
        self._paths: OrderedDict[int, tuple[PromptPath, int]] = OrderedDict()  # conversation id: (path, its cost)
        self._cost = 0

    def get(self, conversation_id: int) -> PromptPath | None:
        found = self._paths.get(conversation_id)
        if found is None:
            return None
        self._paths.move_to_end(conversation_id)
        return found[0]

    def put(self, conversation_id: int, path: PromptPath) -> None:
        self.drop(conversation_id)
        cost = path.cost
        if cost > self.max_cost:
            return
        self._paths[conversation_id] = (path, cost)
        self._cost += cost
        while self._cost > self.max_cost or len(self._paths) > self.max_paths:
            _, (_, oldest) = self._paths.popitem(last=False)
            self._cost -= oldest

    def advance(self, conversation_id: int, owner: int, message: Message) -> None:
        """`message` was just added under the kept path's leaf: the path to it is that one
        and it, chosen within the kept budget, so the next prompt, which ends there, reads
        nothing. A message under another (an edit's sibling, a regenerated answer) or with
        files leaves the kept path as it is (still true of its own leaf)."""
        found = self._paths.get(conversation_id)
        if found is None:
            return
        cached = found[0]
        if cached.owner == owner and not message.attachments and message.parent_id == cached.leaf:
            self.put(conversation_id, extend((message,), cached, message.message_id, cached.budget))

    def drop(self, conversation_id: int) -> None:
        found = self._paths.pop(conversation_id, None)
        if found is not None:
            self._cost -= found[1]
