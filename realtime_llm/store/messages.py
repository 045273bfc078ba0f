"""A conversation's messages: the tree of their versions, the active branch, the prompt's
path up it, and adding one (store/tree.py has the tree in memory)."""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from databases import Database

from realtime_llm.cache import HistoryCache
from realtime_llm.errors import ConversationNotFound
from realtime_llm.store.compiled import Script, transaction
from realtime_llm.store.files import FileStore, StoredFile, attach
from realtime_llm.store.paths import PathCache, PromptPath, extend, read_path, text_size
from realtime_llm.store.records import Conversation, Message, message_from_row
from realtime_llm.store.shapes import branch_json, message_json
from realtime_llm.store.statements import (
    ACTIVE_LEAF,
    ACTIVE_LEAF_FOR_UPDATE,
    ADD_USAGE,
    ALL_MESSAGES,
    CHILDREN,
    INSERT_MESSAGE,
    MOVE_LEAF,
    NEXT_MESSAGE_ID,
    ONE_MESSAGE,
    PATH_UP,
    SKELETON,
)
from realtime_llm.store.tree import Tree
from realtime_llm.usage import Usage

IMAGE_COST_CHARS = 4_000  # what an image counts for in the prompt budget (about 1,000 tokens)
NEWER_PAGE = 4  # rows read up from a new leaf to find the last prompt's (a turn adds two)
PROMPT_IMAGE_BYTES = 20 * 1024 * 1024  # images a prompt carries at most, in bytes (base64 adds a third)


class MessageStore:
    """Every read and write of messages is bound to their conversation (and a write to its owner)."""

    def __init__(self, database: Database, cache: HistoryCache, files: FileStore) -> None:
        self.database = database
        self.cache = cache
        self.files = files
        self.paths = PathCache()  # this process's last prompt path of each conversation

    async def history(self, conversation: Conversation) -> list[dict[str, object]]:
        """The active branch as the history route shows it: from the cache when it is current."""
        cid, count, leaf = conversation.id, conversation.message_count, conversation.active_leaf_id
        cached = await self.cache.get(cid, count, leaf)
        if cached is not None:
            return cached
        rows = await ALL_MESSAGES.fetch_all(self.database, cid=cid)
        messages = branch_json(rows, leaf, await self.files.of_messages(cid))
        await self.cache.put(cid, count, leaf, messages)
        return messages

    async def every(self, conversation_id: int) -> list[Message]:
        """Every message of every branch, in id order, with the files each carries."""
        carried = await self.files.of_messages(conversation_id)
        return [dataclasses.replace(m, attachments=tuple(carried.get(m.message_id, ())))
                for m in map(message_from_row, await ALL_MESSAGES.fetch_all(self.database, cid=conversation_id))]

    async def attachments(self, conversation_id: int, message_id: int) -> list[StoredFile]:
        return (await self.files.of_messages(conversation_id, [message_id])).get(message_id, [])

    async def get(self, conversation_id: int, message_id: int) -> Message | None:
        row = await ONE_MESSAGE.fetch_one(self.database, cid=conversation_id, message_id=message_id)
        return None if row is None else message_from_row(row)

    async def tree(self, conversation_id: int) -> Tree:
        return Tree(await SKELETON.fetch_all(self.database, cid=conversation_id))  # type: ignore[arg-type]

    async def active_leaf(self, conversation: Conversation) -> int:
        """Where the active branch ends now (0: no messages); read afresh, not from `conversation`."""
        leaf = await ACTIVE_LEAF.fetch_val(self.database, cid=conversation.id, user_id=conversation.user_id)
        if leaf is None:
            raise ConversationNotFound()
        return int(leaf)

    async def move_leaf(self, conversation: Conversation, expected: int, leaf: int) -> bool:
        """Make the branch ending at `leaf` the active one, if it still ends at `expected`."""
        moved = await MOVE_LEAF.fetch_one(self.database, cid=conversation.id, user_id=conversation.user_id,
                                          expected=expected, leaf=leaf)
        return moved is not None

    async def recent(self, conversation: Conversation, budget_chars: int, leaf: int, page: int = 64,
                     with_reasoning: bool = False) -> list[Message]:
        """The newest messages of the branch ending at `leaf` whose contents (files
        included: their text, IMAGE_COST_CHARS an image) fit in the budget, and whose images
        in PROMPT_IMAGE_BYTES (the newest always), oldest first, each whole with its files;
        read a page at a time up the branch, so a long conversation costs no more than the
        budget. A branch without files is kept for the next turn (store/paths.py), which
        then reads only the messages under it."""
        conversation_id, owner = conversation.id, conversation.user_id
        kept = self.kept(conversation, budget_chars, leaf, with_reasoning)  # kept up to date by add()
        if kept is not None:
            return list(kept.messages)
        cached = self.paths.get(conversation_id)
        if cached is not None and cached.covers(owner, budget_chars, with_reasoning):
            rows = await PATH_UP.fetch_all(self.database, cid=conversation_id, start=leaf, page=NEWER_PAGE)
            ids = [r[0] for r in rows]
            under = rows[:ids.index(cached.leaf)] if cached.leaf in ids else None  # newest first
            if under is not None and not any(r[-1] for r in under):
                path = extend([message_from_row(r[:-1]) for r in under], cached, leaf, budget_chars)
                self.paths.put(conversation_id, path)
                return list(path.messages)
        chosen: list[Message] = []
        used = images = 0
        start, complete, files = leaf, True, False
        while start:
            rows = await PATH_UP.fetch_all(self.database, cid=conversation_id, start=start, page=page)
            carried = await self.files.of_messages(conversation_id, [r[0] for r in rows if r[-1]])
            for r in rows:
                message = message_from_row(r[:-1])
                if r[0] in carried:
                    message = dataclasses.replace(message, attachments=tuple(carried[r[0]]))
                    files = True
                size = text_size(message, with_reasoning) + sum(
                    IMAGE_COST_CHARS if f.is_image else len(f.name) + f.text_chars for f in message.attachments)
                pixels = sum(f.size for f in message.attachments if f.is_image)
                if chosen and (used + size > budget_chars or images + pixels > PROMPT_IMAGE_BYTES):
                    start, complete = 0, False
                    break
                chosen.append(message)
                used += size
                images += pixels
            else:
                start = chosen[-1].parent_id if len(rows) == page else 0
        chosen.reverse()
        if files or not chosen:
            self.paths.drop(conversation_id)
            return await self._with_contents(conversation_id, chosen)
        self.paths.put(conversation_id, read_path(owner, leaf, tuple(chosen), budget_chars, with_reasoning, complete))
        return chosen

    def kept(self, conversation: Conversation, budget_chars: int, leaf: int, with_reasoning: bool = False,
             newer: Sequence[Message] = ()) -> PromptPath | None:
        """The path whose messages recent() chooses for the branch of `newer` (newest
        first, not saved yet) under `leaf`, from the kept path alone: None unless it ends
        at `leaf` (a read would be needed)."""
        cached = self.paths.get(conversation.id)
        if cached is None or cached.leaf != leaf or not cached.covers(conversation.user_id, budget_chars,
                                                                       with_reasoning):
            return None
        return extend(newer, cached, leaf, budget_chars)  # (within this budget, which may be smaller)

    async def _with_contents(self, conversation_id: int, chosen: list[Message]) -> list[Message]:
        """The messages with what a model reads of their files: loaded only for those sent."""
        carrying = [m.message_id for m in chosen if m.attachments]
        if not carrying:
            return chosen
        full = await self.files.of_messages(conversation_id, carrying, contents=True)
        return [dataclasses.replace(m, attachments=tuple(full.get(m.message_id, ()))) if m.attachments else m
                for m in chosen]

    async def add(self, conversation: Conversation, role: str, content: str,
                          usage: Usage | None = None, *, reasoning: str = "", parent_id: int | None = None,
                          attachments: Sequence[StoredFile] = ()) -> Message:
        """Add a message under `parent_id` (by default: at the end of the active branch),
        carrying `attachments` (files of the conversation's owner), and make the branch
        ending with it the active one. Its message_id is the conversation's next, taken
        atomically. An answer's usage is added to its owner's totals in the same
        transaction. A conversation deleted meanwhile is ConversationNotFound: nothing is written."""
        now = int(time.time())
        cid, user_id = conversation.id, conversation.user_id

        def append() -> Script[tuple[int, int, int, list[int]]]:
            leaf = yield ACTIVE_LEAF_FOR_UPDATE.bind(cid=cid, user_id=user_id)
            numbered = yield NEXT_MESSAGE_ID.bind(cid=cid, user_id=user_id)
            if not leaf or not numbered:
                raise ConversationNotFound()
            (message_id, count), active = numbered[0], leaf[0][0]
            parent = active if parent_id is None else parent_id
            yield INSERT_MESSAGE.bind(
                cid=cid, message_id=message_id, role=role, content=content,
                created_time=now, prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                usage_estimated=int(usage.estimated) if usage else 0, reasoning=reasoning,
                reasoning_tokens=usage.reasoning_tokens if usage else None, parent_id=parent)
            yield from attach(cid, user_id, message_id, [f.file_id for f in attachments])
            # The active leaf has no children (NEXT_MESSAGE_ID and MOVE_LEAF see to it): a
            # message after it is an only child.
            siblings = [message_id] if parent == active else [
                row[0] for row in (yield CHILDREN.bind(cid=cid, parent=parent))]
            if usage is not None:
                yield ADD_USAGE.bind(cid=cid, prompt_tokens=usage.prompt_tokens,
                                     completion_tokens=usage.completion_tokens)
            return int(message_id), int(count), int(parent), siblings

        message_id, count, parent, siblings = await transaction(self.database, append)
        message = Message(message_id, role, content, now, usage, reasoning, parent, tuple(attachments))
        self.paths.advance(cid, user_id, message)
        await self.cache.append(cid, message_json(message, siblings), count, parent)
        return message
