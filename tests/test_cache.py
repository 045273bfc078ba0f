"""The Redis history cache: write-through, never stale, and never needed for correctness."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest
import redis.asyncio as aioredis

from realtime_llm.cache import RedisHistoryCache
from realtime_llm.keys import APIKeyBox
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.users import UserStore
from tests.backends import redis_url
from tests.test_store import db  # noqa: F401  (the store fixture, reused)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url())
    yield connection
    await connection.aclose()


async def test_history_is_cached_written_through_and_checked(db, client, tmp_path: Path) -> None:  # noqa: F811
    cache = RedisHistoryCache(client, f"rtllm-test-{uuid.uuid4().hex[:8]}", 60)
    store = ConversationStore(db, APIKeyBox("s" * 40), cache)
    user = await UserStore(db).create(f"cache_{uuid.uuid4().hex[:6]}", "hash")
    created = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")
    await store.add_message(created, "user", "one")
    conversation = await store.get_owned(created.id, user.id)
    first = await store.history(conversation)
    assert [m["content"] for m in first] == ["one"]
    assert await client.llen(cache.key(created.id)) == 1  # filled by the read

    await store.add_message(created, "assistant", "two")  # written through
    assert await client.llen(cache.key(created.id)) == 2
    conversation = await store.get_owned(created.id, user.id)
    assert [m["content"] for m in await store.history(conversation)] == ["one", "two"]

    # A cache that missed a write (here: emptied behind its back, then refilled short) is not served.
    await client.delete(cache.key(created.id))
    await cache.put(created.id, first)
    assert [m["content"] for m in await store.history(conversation)] == ["one", "two"]

    await store.delete_owned(created.id, user.id)
    assert await client.exists(cache.key(created.id)) == 0


async def test_cache_after_messages_are_dropped(db, client) -> None:  # noqa: F811
    """Edits leave gaps in message ids: the cache still serves the right history, and a
    reader that filled it with the old turns just before the drop cannot make it serve them."""
    cache = RedisHistoryCache(client, f"rtllm-test-{uuid.uuid4().hex[:8]}", 60)
    store = ConversationStore(db, APIKeyBox("s" * 40), cache)
    user = await UserStore(db).create(f"cache_{uuid.uuid4().hex[:6]}", "hash")
    created = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")
    for text in ("q1", "a1", "q2", "a2"):
        await store.add_message(created, "user" if text.startswith("q") else "assistant", text)
    stale = await store.history(await store.get_owned(created.id, user.id))  # a reader, slow to finish
    await store.drop_messages_from(created.id, 3)
    await cache.put(created.id, stale)  # ... its write lands after the drop
    await store.add_message(created, "user", "q2 edited")  # appended to the stale list
    truth = ["q1", "a1", "q2 edited"]
    conversation = await store.get_owned(created.id, user.id)
    assert [m["content"] for m in await store.history(conversation)] == truth
    assert await client.llen(cache.key(created.id)) == 3  # rebuilt, and from now on used
    await store.add_message(created, "assistant", "a2 new")
    conversation = await store.get_owned(created.id, user.id)
    assert (conversation.message_count, conversation.last_message_id) == (4, 6)
    assert await cache.get(created.id, 4, 6) is not None  # served from the cache
    assert [m["content"] for m in await store.history(conversation)] == [*truth, "a2 new"]
