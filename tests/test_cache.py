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
    await store.messages.add(created, "user", "one")
    conversation = await store.get_owned(created.id, user.id)
    first = await store.messages.history(conversation)
    assert [m["content"] for m in first] == ["one"]
    assert await client.llen(cache.key(created.id)) == 2  # filled by the read: its header, the message

    await store.messages.add(created, "assistant", "two")  # written through
    assert await client.llen(cache.key(created.id)) == 3
    conversation = await store.get_owned(created.id, user.id)
    assert await cache.get(created.id, conversation.message_count, conversation.active_leaf_id) is not None
    assert [m["content"] for m in await store.messages.history(conversation)] == ["one", "two"]

    # A cache that missed a write (here: emptied behind its back, then refilled short) is not served.
    await client.delete(cache.key(created.id))
    await cache.put(created.id, 1, 1, first)
    assert [m["content"] for m in await store.messages.history(conversation)] == ["one", "two"]

    await store.delete_owned(created.id, user.id)
    assert await client.exists(cache.key(created.id)) == 0


async def test_cache_across_edits_regenerations_and_switches(db, client) -> None:  # noqa: F811
    """An edit, a new answer version and branch switches change what history shows: the
    cache serves the right branch and the right sibling ids after each, and a reader that
    fills it with the old branch just after a change cannot make it serve that."""
    cache = RedisHistoryCache(client, f"rtllm-test-{uuid.uuid4().hex[:8]}", 60)
    store = ConversationStore(db, APIKeyBox("s" * 40), cache)
    user = await UserStore(db).create(f"cache_{uuid.uuid4().hex[:6]}", "hash")
    created = await store.create(user.id, title="t", model="demo", system_prompt="", api_key="")
    for text in ("q1", "a1", "q2", "a2"):
        await store.messages.add(created, "user" if text.startswith("q") else "assistant", text)

    async def shown() -> list[tuple[str, list[int]]]:
        conversation = await store.get_owned(created.id, user.id)
        return [(m["content"], m["sibling_ids"]) for m in await store.messages.history(conversation)]

    stale = await store.messages.history(await store.get_owned(created.id, user.id))  # a reader, slow to finish
    await store.messages.add(created, "user", "q2 edited", parent_id=2)  # message 5, a sibling of 3
    await cache.put(created.id, 4, 4, stale)  # ... its write lands after the edit
    await store.messages.add(created, "assistant", "a2 edited")  # 6
    assert await shown() == [("q1", [1]), ("a1", [2]), ("q2 edited", [3, 5]), ("a2 edited", [6])]
    assert await cache.get(created.id, 6, 6) is not None  # rebuilt, and from now on used

    await store.messages.add(created, "assistant", "a2 edited, again", parent_id=5)  # 7: another version of 6
    assert await shown() == [("q1", [1]), ("a1", [2]), ("q2 edited", [3, 5]), ("a2 edited, again", [6, 7])]

    conversation = await store.get_owned(created.id, user.id)
    assert await store.messages.move_leaf(conversation, 7, 4)  # back to the first version of the question
    assert await shown() == [("q1", [1]), ("a1", [2]), ("q2", [3, 5]), ("a2", [4])]
    assert not await store.messages.move_leaf(conversation, 7, 6)  # moved on since: refused
    await store.messages.add(created, "user", "q3")  # 8, after a2
    assert await shown() == [("q1", [1]), ("a1", [2]), ("q2", [3, 5]), ("a2", [4]), ("q3", [8])]
    conversation = await store.get_owned(created.id, user.id)
    assert (conversation.message_count, conversation.active_leaf_id) == (8, 8)
    assert await cache.get(created.id, 8, 8) is not None  # written through
