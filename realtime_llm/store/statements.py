"""The statements of the hot path (a generation's start and end, the history), compiled
once per dialect (store/compiled.py)."""
from __future__ import annotations

import sqlalchemy as sa

from realtime_llm.store.compiled import Compiled
from realtime_llm.store.records import Conversation
from realtime_llm.store.schema import conversations, messages, users

# In the order store/records.message_from_row reads them.
MESSAGE_COLUMNS = (
    messages.c.message_id, messages.c.role, messages.c.content, messages.c.created_time,
    messages.c.prompt_tokens, messages.c.completion_tokens, messages.c.usage_estimated,
    messages.c.reasoning, messages.c.reasoning_tokens, messages.c.parent_id,
)

_cid: sa.BindParameter[int] = sa.bindparam("cid")
OWNED = Compiled(sa.select(*(conversations.c[f] for f in Conversation.__dataclass_fields__))
                 .where(conversations.c.id == _cid, conversations.c.user_id == sa.bindparam("user_id")))
EXISTS = Compiled(sa.select(conversations.c.id).where(conversations.c.id == _cid))
EVENT_CEILING = Compiled(sa.select(conversations.c.last_event_id).where(conversations.c.id == _cid))
RAISE_EVENT_CEILING = Compiled(
    conversations.update()
    .where(conversations.c.id == _cid, conversations.c.last_event_id < sa.bindparam("last_event_id"))
    .values(last_event_id=sa.bindparam("last_event_id")))
# Every message, in driver rows, for the history (which picks out the active branch) and
# the export: for 10,000 messages `databases`' Record objects and their per-field lookups
# cost three times the query (bench.history).
ALL_MESSAGES = Compiled(sa.select(*MESSAGE_COLUMNS).where(messages.c.conversation_id == _cid)
                        .order_by(messages.c.message_id))
ONE_MESSAGE = Compiled(sa.select(*MESSAGE_COLUMNS).where(messages.c.conversation_id == _cid,
                                                        messages.c.message_id == sa.bindparam("message_id")))
# The tree without its text: (message_id, parent_id) in id order, so children come oldest first.
SKELETON = Compiled(sa.select(messages.c.message_id, messages.c.parent_id)
                    .where(messages.c.conversation_id == _cid).order_by(messages.c.message_id))
CHILDREN = Compiled(sa.select(messages.c.message_id).where(
    messages.c.conversation_id == _cid, messages.c.parent_id == sa.bindparam("parent"))
    .order_by(messages.c.message_id))


def _path_up() -> Compiled:
    """Up to `page` messages from `start` towards the first, newest first: the branch
    through `start` read backwards a page at a time, each step one index lookup."""
    step = messages.alias("step")
    up = sa.select(sa.cast(sa.bindparam("start"), sa.Integer).label("message_id"),
                   sa.cast(sa.literal(0), sa.Integer).label("depth")).cte("up", recursive=True)
    up = up.union_all(sa.select(step.c.parent_id, up.c.depth + 1).where(
        step.c.conversation_id == _cid, step.c.message_id == up.c.message_id, step.c.parent_id != 0,
        up.c.depth + 1 < sa.bindparam("page")))
    return Compiled(sa.select(*MESSAGE_COLUMNS).join_from(
        up, messages, sa.and_(messages.c.conversation_id == _cid, messages.c.message_id == up.c.message_id))
        .order_by(up.c.depth))


PATH_UP = _path_up()
ACTIVE_LEAF = Compiled(sa.select(conversations.c.active_leaf_id).where(
    conversations.c.id == _cid, conversations.c.user_id == sa.bindparam("user_id")))
# Moves the active leaf only from where the caller saw it, so a move never undoes another's.
MOVE_LEAF = Compiled(
    conversations.update().where(conversations.c.id == _cid, conversations.c.user_id == sa.bindparam("user_id"),
                                 conversations.c.active_leaf_id == sa.bindparam("expected"))
    .values(active_leaf_id=sa.bindparam("leaf")).returning(conversations.c.id))
# Bound to the owner too: a write that belongs to a conversation names it whole.
NEXT_MESSAGE_ID = Compiled(
    conversations.update().where(conversations.c.id == _cid, conversations.c.user_id == sa.bindparam("user_id"))
    .values(last_message_id=conversations.c.last_message_id + 1, message_count=conversations.c.message_count + 1,
            active_leaf_id=conversations.c.last_message_id + 1)  # a new message ends the active branch
    .returning(conversations.c.last_message_id, conversations.c.message_count))
INSERT_MESSAGE = Compiled(messages.insert().values(
    conversation_id=_cid, message_id=sa.bindparam("message_id"), role=sa.bindparam("role"),
    content=sa.bindparam("content"), created_time=sa.bindparam("created_time"),
    prompt_tokens=sa.bindparam("prompt_tokens"), completion_tokens=sa.bindparam("completion_tokens"),
    usage_estimated=sa.bindparam("usage_estimated"), reasoning=sa.bindparam("reasoning"),
    reasoning_tokens=sa.bindparam("reasoning_tokens"), parent_id=sa.bindparam("parent_id")))
ADD_USAGE = Compiled(
    users.update()
    .where(users.c.id == sa.select(conversations.c.user_id).where(conversations.c.id == _cid).scalar_subquery())
    .values(prompt_tokens=users.c.prompt_tokens + sa.bindparam("prompt_tokens"),
            completion_tokens=users.c.completion_tokens + sa.bindparam("completion_tokens")))
