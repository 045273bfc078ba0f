"""Tables (SQLAlchemy Core) and the ordered list of schema upgrades."""
from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# 64-bit ids on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is the 64-bit rowid already,
# and only that exact type name makes it one.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(100), nullable=False),
    sa.Column("created_time", sa.BigInteger, nullable=False),
)

conversations = sa.Table(
    "conversations",
    metadata,
    # Sequential ids: unique without a race, far below 2**53, and harmless to guess
    # because every route answers someone else's conversation exactly like a missing one.
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("title", sa.Text, nullable=False, server_default=""),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("system_prompt", sa.Text, nullable=False, server_default=""),
    sa.Column("api_key_sealed", sa.Text, nullable=False, server_default=""),
    sa.Column("api_key_hint", sa.String(16), nullable=False, server_default=""),
    sa.Column("created_time", sa.BigInteger, nullable=False),
    sa.Column("last_message_id", sa.Integer, nullable=False, server_default="0"),
    # The highest event id published so far, so ids keep increasing after a restart
    # or a Redis flush; written when a generation ends.
    sa.Column("last_event_id", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_conversations_user_newest", "user_id", sa.text("id DESC")),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column(
        "conversation_id",
        Id,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("message_id", sa.Integer, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("created_time", sa.BigInteger, nullable=False),
    # Also the index for "messages of a conversation in order".
    sa.UniqueConstraint("conversation_id", "message_id", name="uq_messages_conversation_order"),
)

revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

# Each upgrade takes the schema from version i to i+1. Version 1 creates the tables
# above; later issues append upgrades (ALTER TABLE ... ADD COLUMN, new indexes) here
# and must never edit an upgrade that has shipped.
BASELINE = (users, conversations, messages, revoked_tokens)
UPGRADES: list[list[str]] = []
SCHEMA_VERSION = 1 + len(UPGRADES)
