"""The process's pub/sub connection to a single Redis: a channel left with `linger` stays
subscribed a while, its messages dropped, and is taken up again without a SUBSCRIBE."""
from __future__ import annotations

import asyncio
import os
import uuid
from typing import AsyncIterator

import pytest
import redis.asyncio as aioredis

from realtime_llm.broker import pubsub as pubsub_module
from realtime_llm.broker.pubsub import RedisPubSub
from tests.backends import PrivateRedis, redis_url

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url())
    yield redis
    await redis.aclose()


async def opened(client: aioredis.Redis, linger: float) -> RedisPubSub:
    pubsub = RedisPubSub(client, f"rtllm-test-{uuid.uuid4().hex[:8]}", linger=linger)
    await pubsub.start()
    return pubsub


async def subscribers(client: aioredis.Redis, channel: bytes) -> int:
    return int((await client.pubsub_numsub(channel))[0][1])


async def received(got: list[bytes], count: int) -> None:
    async with asyncio.timeout(2):
        while len(got) < count:
            await asyncio.sleep(0.005)


async def test_a_channel_left_lingers_drops_its_messages_and_is_taken_up_again(client: aioredis.Redis) -> None:
    pubsub = await opened(client, linger=0.4)
    channel, sentinel = f"{pubsub.prefix}:live".encode(), f"{pubsub.prefix}:sentinel".encode()
    try:
        first: list[bytes] = []
        await pubsub.subscribe(channel, first.append)
        await client.publish(channel, b"one")
        await received(first, 1)
        await pubsub.unsubscribe(channel, linger=True)
        assert await subscribers(client, channel) == 1
        await client.publish(channel, b"to nobody")
        marks: list[bytes] = []  # one connection, in order: the mark comes after the message
        await pubsub.subscribe(sentinel, marks.append)
        await client.publish(sentinel, b"mark")
        await received(marks, 1)

        second: list[bytes] = []
        await pubsub.subscribe(channel, second.append)  # taken up: confirmed long ago
        await client.publish(channel, b"two")
        await received(second, 1)
        assert first == [b"one"] and second == [b"two"]
        await asyncio.sleep(0.8)  # taken up, it no longer lingers: the reaper leaves it
        assert await subscribers(client, channel) == 1
        await client.publish(channel, b"three")
        await received(second, 2)

        await pubsub.unsubscribe(channel, linger=True)
        await asyncio.sleep(0.8)  # the linger and a pass of the reaper (every linger/4)
        assert await subscribers(client, channel) == 0

        third: list[bytes] = []
        await pubsub.subscribe(channel, third.append)  # subscribed anew, and confirmed
        assert await subscribers(client, channel) == 1
        await client.publish(channel, b"four")
        await received(third, 1)
        assert third == [b"four"]
    finally:
        await pubsub.close()


async def test_a_channel_left_without_linger_goes_at_once(client: aioredis.Redis) -> None:
    pubsub = await opened(client, linger=60)
    channel = f"{pubsub.prefix}:stop".encode()
    try:
        await pubsub.subscribe(channel, lambda _: None, keep=True)
        await pubsub.unsubscribe(channel)
        assert await subscribers(client, channel) == 0
    finally:
        await pubsub.close()


async def test_lingering_channels_are_bounded_the_longest_left_goes_first(
        client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pubsub_module, "LINGER_CHANNELS", 2)
    pubsub = await opened(client, linger=60)
    channels = [f"{pubsub.prefix}:live:{i}".encode() for i in range(3)]
    try:
        for channel in channels:
            await pubsub.subscribe(channel, lambda _: None)
        for channel in channels:
            await pubsub.unsubscribe(channel, linger=True)
        assert [await subscribers(client, c) for c in channels] == [0, 1, 1]
    finally:
        await pubsub.close()


async def test_a_subscribe_racing_the_reapers_unsubscribe_stays_subscribed(client: aioredis.Redis) -> None:
    """The reaper's UNSUBSCRIBE goes out before the new SUBSCRIBE, and Redis answers them
    in order: the channel ends subscribed, and its messages reach the new handler."""
    pubsub = await opened(client, linger=0.2)
    channel = f"{pubsub.prefix}:live".encode()
    try:
        for _ in range(20):
            await pubsub.subscribe(channel, lambda _: None)
            await pubsub.unsubscribe(channel, linger=True)
            await asyncio.sleep(0.2 + 0.05 * (_ % 3) - 0.05)  # around the linger's end
            got: list[bytes] = []
            await pubsub.subscribe(channel, got.append)
            assert await subscribers(client, channel) == 1
            await client.publish(channel, b"x")
            await received(got, 1)
            await pubsub.unsubscribe(channel)
            assert await subscribers(client, channel) == 0
    finally:
        await pubsub.close()


async def test_a_lost_connection_takes_the_lingering_channels_with_it() -> None:
    """Taken up after a reconnect, a channel that lingered is subscribed anew."""
    private = PrivateRedis()
    client = aioredis.Redis.from_url(private.url)
    pubsub = await opened(client, linger=60)
    channel = f"{pubsub.prefix}:live".encode()
    try:
        await pubsub.subscribe(channel, lambda _: None)
        await pubsub.unsubscribe(channel, linger=True)
        await client.client_kill_filter(_type="pubsub")
        assert await subscribers(client, channel) == 0
        process_channel = f"{pubsub.prefix}:process:{os.getpid()}".encode()
        async with asyncio.timeout(5):  # reconnected: the process's own channel is back
            while not await subscribers(client, process_channel):
                await asyncio.sleep(0.02)
        got: list[bytes] = []
        await pubsub.subscribe(channel, got.append)
        assert await subscribers(client, channel) == 1
        await client.publish(channel, b"after")
        await received(got, 1)
    finally:
        await pubsub.close()
        await client.aclose()
        private.stop()
