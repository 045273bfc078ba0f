"""The statements of the hot path (a generation's start and end, the history), compiled
once per dialect (store/compiled.py)."""
from __future__ import annotations

import sqlalchemy as sa

from realtime_llm.store.compiled import Compiled
from realtime_llm.store.records import Conversation
from realtime_llm.store.schema import conversations, message_files, messages, users

# In the order store/records.message_from_row reads them.
MESSAGE_COLUMNS = (
    messages.c.message_id, messages.c.role, messages.c.content, messages.c.created_time,
    messages.c.prompt_tokens, messages.c.completion_tokens, messages.c.usage_estimated,
    messages.c.reasoning, messages.c.reasoning_tokens, messages.c.parent_id,
)

# In the order of Conversation's fields.
CONVERSATION_COLUMNS = tuple(conversations.c[f] for f in Conversation.__dataclass_fields__)

_cid: sa.BindParameter[int] = sa.bindparam("cid")
OWNED = Compiled(sa.select(*CONVERSATION_COLUMNS)
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


def _up() -> sa.CTE:
    """Up to `page` messages from `start` towards the first, each step one index lookup:
    (message_id, depth), depth 0 for `start`."""
    step = messages.alias("step")
    up = sa.select(sa.cast(sa.bindparam("start"), sa.Integer).label("message_id"),
                   sa.cast(sa.literal(0), sa.Integer).label("depth")).cte("up", recursive=True)
    return up.union_all(sa.select(step.c.parent_id, up.c.depth + 1).where(
        step.c.conversation_id == _cid, step.c.message_id == up.c.message_id, step.c.parent_id != 0,
        up.c.depth + 1 < sa.bindparam("page")))


_path = _up()
_on_path = sa.and_(messages.c.conversation_id == _cid, messages.c.message_id == _path.c.message_id)
# The branch through `start` read backwards a page at a time, newest first; the last column
# says whether the message carries files (one primary-key probe), so that a prompt of
# messages without any asks nothing more.
_carries = sa.exists().where(message_files.c.conversation_id == _cid,
                             message_files.c.message_id == messages.c.message_id)
PATH_UP = Compiled(sa.select(*MESSAGE_COLUMNS, _carries.label("carries")).join_from(_path, messages, _on_path)
                   .order_by(_path.c.depth))
PATH_LENGTH = Compiled(sa.select(sa.func.count()).select_from(_path.join(messages, _on_path)))
# A fork: the branch up to `start` copied, in SQL, into conversation `new` as messages 1..n,
# with the files they carry.
_COPIED = ("role", "content", "created_time", "prompt_tokens", "completion_tokens", "usage_estimated",
           "reasoning", "reasoning_tokens")
_n = sa.bindparam("n", type_=sa.Integer)
COPY_PATH = Compiled(messages.insert().from_select(
    ["conversation_id", "message_id", "parent_id", *_COPIED],
    sa.select(sa.cast(sa.bindparam("new"), messages.c.conversation_id.type), _n - _path.c.depth,
              _n - _path.c.depth - 1, *(messages.c[c] for c in _COPIED)).join_from(_path, messages, _on_path)))
_mf = message_files
COPY_PATH_FILES = Compiled(_mf.insert().from_select(
    ["conversation_id", "message_id", "position", "file_id"],
    sa.select(sa.cast(sa.bindparam("new"), _mf.c.conversation_id.type), _n - _path.c.depth, _mf.c.position,
              _mf.c.file_id).join_from(_path, _mf, sa.and_(_mf.c.conversation_id == _cid,
                                                          _mf.c.message_id == _path.c.message_id))))
_active_leaf = sa.select(conversations.c.active_leaf_id).where(
    conversations.c.id == _cid, conversations.c.user_id == sa.bindparam("user_id"))
ACTIVE_LEAF = Compiled(_active_leaf)
# The same inside a transaction that adds under it: on PostgreSQL the row stays locked until
# the commit, so no other message is added under the same leaf meanwhile (SQLite's
# transactions take the write lock at BEGIN already).
ACTIVE_LEAF_FOR_UPDATE = Compiled(_active_leaf.with_for_update())
# Moves the active leaf only from where the caller saw it (so a move never undoes another's)
# and only to a message without children: the active branch always ends at a leaf.
_step = messages.alias("child")
MOVE_LEAF = Compiled(
    conversations.update().where(
        conversations.c.id == _cid, conversations.c.user_id == sa.bindparam("user_id"),
        conversations.c.active_leaf_id == sa.bindparam("expected"),
        ~sa.exists().where(_step.c.conversation_id == _cid, _step.c.parent_id == sa.bindparam("leaf")))
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
