"""Tables (SQLAlchemy Core) and the ordered list of schema upgrades."""
from __future__ import annotations

from dataclasses import dataclass, field

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
    # Token usage of all this user's answers, kept when conversations are deleted (v2).
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
    # Login sessions (JWTs) carry the epoch they were issued in; a password change or a
    # "log out everywhere" moves it on, and when (v7), so every process ends their streams.
    sa.Column("session_epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sessions_ended_at", sa.Float, nullable=False, server_default="0"),
    # 1 once an imported user logged in with a password shorter than today's minimum (v8):
    # GET /api/users/me says so until the password is changed.
    sa.Column("password_change_required", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_users_sessions_ended_at", "sessions_ended_at"),
    # A user id is never handed out twice (SQLite AUTOINCREMENT, PostgreSQL BIGSERIAL): a
    # token's `sub` must never come to mean somebody else (v3).
    sqlite_autoincrement=True,
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
    # How many messages it has now (v2; with branches, v5, every message ever: none is
    # deleted). The history cache is valid for this count and active_leaf_id (cache.py).
    sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
    # The event id ceiling: no id above it has been handed out. The broker reserves ids in
    # blocks ahead of publishing them, so ids keep increasing after a crash, a restart or a
    # Redis flush (broker/eventids.py).
    sa.Column("last_event_id", sa.BigInteger, nullable=False, server_default="0"),
    # Generation settings sent upstream (v4): a JSON object of those set, e.g. {"temperature": 0.2}.
    sa.Column("params", sa.Text, nullable=False, server_default="{}"),
    # The active branch ends here (v5): the message_id of a message without children, 0
    # while there is none. History shows the path from the first message to it.
    sa.Column("active_leaf_id", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_conversations_user_newest", "user_id", sa.text("id DESC")),
    # Never reused (v3): without AUTOINCREMENT SQLite hands the newest deleted id to the
    # next conversation, and an answer or title still on its way to the old one landed in
    # somebody else's.
    sqlite_autoincrement=True,
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
    # Answers only (v2): the upstream's counts, or our estimate when usage_estimated is 1.
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("usage_estimated", sa.Integer, nullable=False, server_default="0"),
    # Answers of reasoning models (v4): their thinking, and its tokens where reported.
    sa.Column("reasoning", sa.Text, nullable=False, server_default=""),
    sa.Column("reasoning_tokens", sa.Integer, nullable=True),
    # The tree of versions (v5): the message_id this one follows, 0 for a first message.
    # An edit is a sibling of the message it edits, a regenerated answer one of the answer.
    sa.Column("parent_id", sa.Integer, nullable=False, server_default="0"),
    # A message's children in order: the siblings of a version, the newest below a message.
    sa.Index("ix_messages_children", "conversation_id", "parent_id", "message_id"),
    # Also the index for "messages of a conversation in order".
    sa.UniqueConstraint("conversation_id", "message_id", name="uq_messages_conversation_order"),
)

# Uploaded files (v6), in the database itself so every process and machine serves them:
# their bytes in chunks (file_chunks), so that neither an upload nor a download holds a
# whole file in memory, nor does the database driver. `text` is a PDF's text, which is
# what a model reads of it; `text_chars` how long that is (a text file's: its own text).
files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # "file_" and 24 random letters: not guessable
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(100), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("width", sa.Integer, nullable=True),  # images, where their header says
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("text_chars", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_time", sa.BigInteger, nullable=False),
    sa.Column("text", sa.Text, nullable=False, server_default=""),  # last: a long one overflows its row
    sa.Index("ix_files_user", "user_id"),
    sa.Index("ix_files_created", "created_time"),  # the sweep of unattached files
)

file_chunks = sa.Table(
    "file_chunks",
    metadata,
    sa.Column("file_id", sa.String(40), sa.ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("file_id", "seq"),
)

# Which files a message carries, in order (v6). A file may be carried by several messages
# (an edit keeps them, a fork copies them); it goes when the last conversation holding it does.
message_files = sa.Table(
    "message_files",
    metadata,
    sa.Column("conversation_id", Id, sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("message_id", sa.Integer, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    # No cascade: a file is deleted only once no message carries it (store/files.py checks,
    # with the file's row locked), and a delete that loses a race fails instead of quietly
    # taking the file off a message just saved.
    sa.Column("file_id", sa.String(40), sa.ForeignKey("files.id"), nullable=False),
    sa.PrimaryKeyConstraint("conversation_id", "message_id", "position"),
    sa.Index("ix_message_files_file", "file_id"),
)

# API tokens for scripts and services (v7): only a hash of each is kept; deleting the row
# ends the token (its open streams end through a revocation of "api:<id>").
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # "tok_" and random letters
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_time", sa.BigInteger, nullable=False),
    sa.Column("expires_time", sa.BigInteger, nullable=True),  # null: until deleted
    sa.Index("ix_api_tokens_user", "user_id"),
)

# Read-only share links (v7): one a conversation; deleting the row ends its viewers (through
# a revocation of "share:<id>", as for tokens).
shares = sa.Table(
    "shares",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # "shr_" and random letters: the link
    sa.Column("conversation_id", Id, sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False,
              unique=True),
    sa.Column("created_time", sa.BigInteger, nullable=False),
)

revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    # When it was revoked (v3): each process looks up the newest revocations every second
    # and ends the streams and sockets opened with them (realtime_llm/sessions.py).
    sa.Column("revoked_at", sa.Float, nullable=False, server_default="0", index=True),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)


@dataclass(frozen=True)
class Upgrade:
    """One schema version step. `alter` brings an existing database's tables up to the
    definitions above (a new database gets them from CREATE TABLE and skips it); `extras`
    are what those definitions cannot say (search indexes), per dialect, run on both."""

    alter: tuple[str, ...] = ()
    extras: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # SQLite tables recreated from their definitions above, rows and ids kept: what its
    # ALTER TABLE cannot change (AUTOINCREMENT). See database.rebuild_sqlite_tables.
    rebuild_sqlite: tuple[str, ...] = ()
    # New tables, created (with their indexes) from their definitions above.
    creates: tuple[sa.Table, ...] = ()


# Message search. SQLite: an FTS5 index with the trigram tokenizer (substring matches,
# case-insensitive), kept in step with `messages` by triggers (since version 9, written
# behind them: SEARCH_SQLITE_BEHIND). PostgreSQL: a trigram GIN
# index (pg_trgm) that ILIKE '%...%' uses; creating the extension needs a privileged role,
# so where it is refused search still works, by scanning (migrate logs it).
SEARCH_SQLITE = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5("
    "content, content='messages', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF content ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content); "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END",
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
)
# Version 9: the index is written behind the messages (store/searchindex.py). A trigger
# only notes a new message's id; deleting or changing one takes it out of the index at
# once, or out of the notes when it is not indexed yet. (On a database without the index
# the first statement fails and the rest are left out, as SEARCH_SQLITE was.)
SEARCH_SQLITE_BEHIND = (
    "DROP TRIGGER messages_fts_insert",
    "DROP TRIGGER messages_fts_delete",
    "DROP TRIGGER messages_fts_update",
    "CREATE TABLE IF NOT EXISTS messages_fts_pending (id INTEGER PRIMARY KEY)",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT OR IGNORE INTO messages_fts_pending (id) VALUES (new.id); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts (messages_fts, rowid, content) SELECT 'delete', old.id, old.content "
    "WHERE NOT EXISTS (SELECT 1 FROM messages_fts_pending WHERE id = old.id); "
    "DELETE FROM messages_fts_pending WHERE id = old.id; END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN "
    "INSERT INTO messages_fts (messages_fts, rowid, content) SELECT 'delete', old.id, old.content "
    "WHERE NOT EXISTS (SELECT 1 FROM messages_fts_pending WHERE id = old.id); "
    "INSERT OR IGNORE INTO messages_fts_pending (id) VALUES (new.id); END",
)
SEARCH_POSTGRESQL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS ix_messages_content_trgm ON messages USING gin (content gin_trgm_ops)",
)

BASELINE = (users, conversations, messages, revoked_tokens, files, file_chunks, message_files, api_tokens, shares)
# Upgrade i takes the schema from version i to i+1; never edit one that has shipped.
UPGRADES: list[Upgrade] = [
    Upgrade(  # 1 -> 2: token usage, message search
        alter=(
            "ALTER TABLE users ADD COLUMN prompt_tokens BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE users ADD COLUMN completion_tokens BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE messages ADD COLUMN prompt_tokens INTEGER",
            "ALTER TABLE messages ADD COLUMN completion_tokens INTEGER",
            "ALTER TABLE messages ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE conversations ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0",
            # Version 1 never deleted single messages: the count is the last id.
            "UPDATE conversations SET message_count = last_message_id",
        ),
        extras={"sqlite": SEARCH_SQLITE, "postgresql": SEARCH_POSTGRESQL},
    ),
    Upgrade(  # 2 -> 3: ids never reused on SQLite; revocations are dated
        alter=(
            "ALTER TABLE revoked_tokens ADD COLUMN revoked_at FLOAT NOT NULL DEFAULT 0",
            "CREATE INDEX IF NOT EXISTS ix_revoked_tokens_revoked_at ON revoked_tokens (revoked_at)",
        ),
        rebuild_sqlite=("users", "conversations"),
    ),
    Upgrade(  # 3 -> 4: reasoning models' thinking; per-conversation generation settings
        alter=(
            "ALTER TABLE messages ADD COLUMN reasoning TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE messages ADD COLUMN reasoning_tokens INTEGER",
            "ALTER TABLE conversations ADD COLUMN params TEXT NOT NULL DEFAULT '{}'",
        ),
    ),
    Upgrade(  # 4 -> 5: branches; a conversation so far is one branch, each message after the one before
        alter=(
            "ALTER TABLE messages ADD COLUMN parent_id INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE conversations ADD COLUMN active_leaf_id INTEGER NOT NULL DEFAULT 0",
            "UPDATE messages SET parent_id = COALESCE((SELECT MAX(p.message_id) FROM messages p"
            " WHERE p.conversation_id = messages.conversation_id AND p.message_id < messages.message_id), 0)",
            "UPDATE conversations SET active_leaf_id = COALESCE((SELECT MAX(m.message_id) FROM messages m"
            " WHERE m.conversation_id = conversations.id), 0)",
            "CREATE INDEX IF NOT EXISTS ix_messages_children ON messages (conversation_id, parent_id, message_id)",
        ),
    ),
    Upgrade(creates=(files, file_chunks, message_files)),  # 5 -> 6: attachments
    Upgrade(  # 6 -> 7: API tokens; ending every login session of a user; share links
        creates=(api_tokens, shares),
        alter=(
            "ALTER TABLE users ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE users ADD COLUMN sessions_ended_at FLOAT NOT NULL DEFAULT 0",
            "CREATE INDEX IF NOT EXISTS ix_users_sessions_ended_at ON users (sessions_ended_at)",
        ),
    ),
    Upgrade(  # 7 -> 8: imported users with a short password are asked to change it
        alter=("ALTER TABLE users ADD COLUMN password_change_required INTEGER NOT NULL DEFAULT 0",),
    ),
    Upgrade(extras={"sqlite": SEARCH_SQLITE_BEHIND}),  # 8 -> 9: SQLite's search index written behind
]
SCHEMA_VERSION = 1 + len(UPGRADES)
