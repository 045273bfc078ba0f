"""The process's pub/sub connection to a single Redis: a channel left with `linger` stays
subscribed a while, its messages dropped, and is taken up again without a SUBSCRIBE.
Each test has a redis-server of its own: it counts commands, or stops the server."""
from __future__ import annotations

import asyncio
import os
import uuid
from typing import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from realtime_llm.broker import pubsub as pubsub_module
from realtime_llm.broker.pubsub import RedisPubSub
from tests.backends import PrivateRedis

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def private() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    yield server
    server.stop()


@pytest.fixture
async def client(private: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(private.url)
    yield redis
    await redis.aclose()


async def opened(client: aioredis.Redis, linger: float) -> RedisPubSub:
    pubsub = RedisPubSub(client, f"rtllm-test-{uuid.uuid4().hex[:8]}", linger=linger)
    await pubsub.start()
    return pubsub


async def subscribers(client: aioredis.Redis, channel: bytes) -> int:
    return int((await client.pubsub_numsub(channel))[0][1])


async def subscribes(client: aioredis.Redis) -> int:
    """SUBSCRIBE commands the server has run."""
    return int((await client.info("commandstats")).get("cmdstat_subscribe", {}).get("calls", 0))


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

        before = await subscribes(client)
        second: list[bytes] = []
        await pubsub.subscribe(channel, second.append)  # taken up: no command
        assert await subscribes(client) == before
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
        assert await subscribes(client) == before + 1
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
    """The reaper's UNSUBSCRIBE and a new SUBSCRIBE at once: they go out in that order and
    Redis answers them in order, so the channel ends subscribed and its messages reach the
    new handler."""
    pubsub = await opened(client, linger=60)
    channel = f"{pubsub.prefix}:live".encode()
    try:
        await pubsub.subscribe(channel, lambda _: None)
        await pubsub.unsubscribe(channel, linger=True)
        got: list[bytes] = []
        await asyncio.gather(pubsub._unsubscribe_now(channel), pubsub.subscribe(channel, got.append))
        assert await subscribers(client, channel) == 1
        await client.publish(channel, b"x")
        await received(got, 1)
    finally:
        await pubsub.close()


async def test_a_lost_connection_takes_the_lingering_channels_with_it(
        private: PrivateRedis, client: aioredis.Redis) -> None:
    """Redis stops with a channel lingering and comes back empty: the loss is told, and the
    channel taken up afterwards is subscribed anew."""
    pubsub = await opened(client, linger=60)
    lost: list[object] = []
    pubsub.on_lost(lost.append)
    channel = f"{pubsub.prefix}:live".encode()
    restarted: PrivateRedis | None = None
    try:
        await pubsub.subscribe(channel, lambda _: None)
        await pubsub.unsubscribe(channel, linger=True)
        private.stop()
        async with asyncio.timeout(5):
            while not lost:
                await asyncio.sleep(0.02)
        restarted = await asyncio.to_thread(PrivateRedis, private.port)  # the same port, empty
        process_channel = f"{pubsub.prefix}:process:{os.getpid()}".encode()
        async with asyncio.timeout(5):  # reconnected: the process's own channel is back
            while not await subscribers(client, process_channel):
                await asyncio.sleep(0.05)
        got: list[bytes] = []
        await pubsub.subscribe(channel, got.append)
        assert await subscribers(client, channel) == 1
        await client.publish(channel, b"after")
        await received(got, 1)
    finally:
        await pubsub.close()
        if restarted is not None:
            restarted.stop()
