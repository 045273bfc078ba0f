"""What comes before an answer, written and published under the conversation's generation
lock: a user message (or a new version of one: an edit), or, for a regenerate, the answer
the new one will be another version of."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from realtime_llm.branches import announce_truncate
from realtime_llm.broker import Broker
from realtime_llm.errors import BadRequest, Conflict
from realtime_llm.events import USER_MESSAGE
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.files import StoredFile
from realtime_llm.store.records import Conversation


@dataclass(frozen=True)
class Turn:
    answers: int  # the user message the answer is to: its parent, where the prompt ends
    after_event_id: int  # the answer's events are the conversation's events after this id
    replaces: int | None = None  # regenerate: the answer the new one is another version of
    parent: int | None = None  # a user message's: the message it was added under


async def user_message(store: ConversationStore, broker: Broker, conversation: Conversation, text: str, *,
                       edit_message_id: int | None, attachments: Sequence[StoredFile] | None,
                       reads_images: bool) -> Turn:
    """Save and publish the user message. With `edit_message_id` (a user message on the
    active branch) it is a new version of that one: its sibling, which with its answer
    becomes the active branch (the old one stays, as another branch). `attachments`: files
    of the owner's it carries (an edit given none keeps the edited message's)."""
    cid = conversation.id
    files = attachments
    if files is None and edit_message_id is not None:
        files = await store.messages.attachments(cid, edit_message_id)
    if any(f.is_image for f in files or ()) and not reads_images:
        raise BadRequest(f"model '{conversation.model}' does not read images")
    if edit_message_id is None:
        message = await store.messages.add(conversation, "user", text, attachments=files or ())
        after = None
    else:
        edited = await store.messages.get(cid, edit_message_id)
        if edited is None or edited.role != "user":
            raise BadRequest("'edit_message_id' must name a user message of this conversation")
        old_leaf = await store.messages.active_leaf(conversation)
        if edited.message_id not in (await store.messages.tree(cid)).path(old_leaf):
            # Clients show the active branch; one that shows another is out of date.
            raise BadRequest("'edit_message_id' must name a message on the active branch: switch first")
        message = await store.messages.add(conversation, "user", text, parent_id=edited.parent_id,
                                           attachments=files or ())
        # Clients showing the branch drop the edited message and what followed it.
        after = await announce_truncate(broker, cid, edited.message_id, old_leaf)
    event = await broker.publish(cid, USER_MESSAGE, text, message_id=message.message_id,
                                 attachments=[f.json() for f in message.attachments])
    return Turn(message.message_id, event.id - 1 if after is None else after, parent=message.parent_id)


async def last_answer(store: ConversationStore, broker: Broker, conversation: Conversation) -> Turn:
    """The last answer on the active branch, to be answered anew to the same prompt (after
    a failed answer: the last user message, to be answered)."""
    cid = conversation.id
    leaf = await store.messages.active_leaf(conversation)
    last = await store.messages.get(cid, leaf) if leaf else None
    if last is None:
        raise Conflict("there is nothing to regenerate: no message of the active branch to answer")
    after = await broker.last_event_id(cid)
    if last.role == "assistant" and last.parent_id:
        return Turn(last.parent_id, after, replaces=last.message_id)
    if last.role == "assistant":
        raise Conflict("there is nothing to regenerate: no message of the active branch to answer")
    return Turn(last.message_id, after)
