"""Changes of the active branch as subscribers learn of them (DESIGN.md, Branches): a
`truncate` for an edit or a regenerated answer, a `branch` for a switch.

Either empties the replay buffer first, so a client resuming from before it gets the
event and what follows it, never messages of the branch it left next to the new one's.
"""
from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING

from realtime_llm.broker import Broker
from realtime_llm.broker.base import BrokerUnavailable
from realtime_llm.errors import BadRequest, Conflict
from realtime_llm.events import BRANCH, TRUNCATE
from realtime_llm.locks import take_lock
from realtime_llm.store.records import Conversation

if TYPE_CHECKING:
    from realtime_llm.services import Services


async def announce_truncate(broker: Broker, cid: int, from_message_id: int, through_message_id: int) -> int:
    """Tell subscribers that the shown messages from `from_message_id` to
    `through_message_id` (the end of the branch they show) give way to what follows;
    returns the id before the event's."""
    await broker.clear_replay(cid)
    event = await broker.publish(cid, TRUNCATE, "", from_message_id=from_message_id,
                                 through_message_id=through_message_id)
    return event.id - 1


async def announce_branch(broker: Broker, cid: int, message_id: int, leaf: int) -> None:
    """Tell subscribers that the branch through `message_id`, ending at `leaf`, is the
    active one now: they re-read the history."""
    await broker.clear_replay(cid)
    await broker.publish(cid, BRANCH, "", message_id=message_id, leaf_message_id=leaf)


SWITCH_OWNER = "branch:"  # how a switch names itself as the lock's holder


async def switch_branch(services: Services, conversation: Conversation, message_id: int) -> None:
    """Make the branch through `message_id` the active one (below it: the newest child at
    each step). Under the conversation's generation lock, so a switch and a new message
    never interleave: while an answer runs, a switch is a Conflict."""
    cid = conversation.id
    store = services.conversations
    owner = f"{SWITCH_OWNER}{uuid.uuid4().hex[:12]}"
    if not await take_lock(services.locks, cid, owner, services.settings.stream.lock_ttl_seconds):
        raise Conflict("a generation is running in this conversation: switch branches when it has ended")
    try:
        current = await store.messages.active_leaf(conversation)  # first: a message added after it moves it
        tree = await store.messages.tree(cid)
        if message_id not in tree:
            raise BadRequest("'message_id' must name a message of this conversation")
        leaf = tree.newest_leaf(message_id)
        if leaf == current:
            return
        if not await store.messages.move_leaf(conversation, current, leaf):
            raise Conflict("the conversation changed meanwhile: read its history and try again")
        # Switched in SQL, which is what counts: a broker outage only keeps other tabs unaware.
        with contextlib.suppress(BrokerUnavailable):
            await announce_branch(services.broker, cid, message_id, leaf)
    finally:
        await services.locks.release(cid, owner)
