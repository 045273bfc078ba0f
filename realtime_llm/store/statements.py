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
    messages.c.reasoning, messages.c.reasoning_tokens,
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
# The whole history, in driver rows: for 10,000 messages `databases`' Record objects and
# their per-field lookups cost three times the query (bench.history).
ALL_MESSAGES = Compiled(sa.select(*MESSAGE_COLUMNS).where(messages.c.conversation_id == _cid)
                        .order_by(messages.c.message_id))
ONE_MESSAGE = Compiled(sa.select(*MESSAGE_COLUMNS).where(messages.c.conversation_id == _cid,
                                                        messages.c.message_id == sa.bindparam("message_id")))
_newest = sa.select(*MESSAGE_COLUMNS).where(messages.c.conversation_id == _cid).order_by(messages.c.message_id.desc())
NEWEST_MESSAGES = Compiled(_newest.limit(sa.bindparam("page")))
LAST_MESSAGE = Compiled(_newest.limit(1))
NEWEST_MESSAGES_BELOW = Compiled(_newest.where(messages.c.message_id < sa.bindparam("below"))
                                 .limit(sa.bindparam("page")))
# Bound to the owner too: a write that belongs to a conversation names it whole.
NEXT_MESSAGE_ID = Compiled(
    conversations.update().where(conversations.c.id == _cid, conversations.c.user_id == sa.bindparam("user_id"))
    .values(last_message_id=conversations.c.last_message_id + 1, message_count=conversations.c.message_count + 1)
    .returning(conversations.c.last_message_id))
INSERT_MESSAGE = Compiled(messages.insert().values(
    conversation_id=_cid, message_id=sa.bindparam("message_id"), role=sa.bindparam("role"),
    content=sa.bindparam("content"), created_time=sa.bindparam("created_time"),
    prompt_tokens=sa.bindparam("prompt_tokens"), completion_tokens=sa.bindparam("completion_tokens"),
    usage_estimated=sa.bindparam("usage_estimated"), reasoning=sa.bindparam("reasoning"),
    reasoning_tokens=sa.bindparam("reasoning_tokens")))
ADD_USAGE = Compiled(
    users.update()
    .where(users.c.id == sa.select(conversations.c.user_id).where(conversations.c.id == _cid).scalar_subquery())
    .values(prompt_tokens=users.c.prompt_tokens + sa.bindparam("prompt_tokens"),
            completion_tokens=users.c.completion_tokens + sa.bindparam("completion_tokens")))
