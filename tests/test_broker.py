"""The broker contract, for every implementation: ids, replay, fan-out, bounds; and the
generation locks' contract: exclusive, expiring, stop requests."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
import weakref
from typing import AsyncIterator, Callable

import pytest
from redis.asyncio.cluster import RedisCluster

from realtime_llm.broker import Broker, GenerationLocks, SubscriberOverflow, open_broker
from realtime_llm.broker.base import BrokerUnavailable, ConversationGone
from realtime_llm.broker.eventids import Gathered
from realtime_llm.broker.memory import MemoryBroker
from realtime_llm.broker.redis import RedisBroker
from realtime_llm.config import Settings
from realtime_llm.events import Event
from realtime_llm.redisclient import redis_client
from tests.backends import PrivateRedis, redis_url
from tests.rediscluster import RedisClusterNodes

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def broker_settings(kind: str, cluster: RedisClusterNodes | None = None) -> Settings:
    stream = {"replay_events": 50, "subscriber_queue": 20}
    settings = Settings().replace(stream=stream)
    prefix = f"rtllm-test-{uuid.uuid4().hex[:8]}"
    if kind == "redis":
        settings = settings.replace(redis={"url": redis_url(), "key_prefix": prefix})
    elif kind == "cluster":  # sharded pub/sub
        assert cluster is not None
        settings = settings.replace(redis={"cluster_nodes": tuple(cluster.nodes), "key_prefix": prefix})
    return settings


@pytest.fixture(params=["memory", "redis", "cluster"])
async def opened(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, GenerationLocks]]:
    cluster = request.getfixturevalue("redis_cluster") if request.param == "cluster" else None
    settings = broker_settings(request.param, cluster)
    async with contextlib.AsyncExitStack() as stack:
        client = redis_client(settings.redis) if settings.redis.enabled else None
        if client is not None:
            stack.push_async_callback(client.aclose)
        yield await open_broker(settings, client, stack)


@pytest.fixture
def broker(opened: tuple[Broker, GenerationLocks]) -> Broker:
    return opened[0]


@pytest.fixture
def locks(opened: tuple[Broker, GenerationLocks]) -> GenerationLocks:
    return opened[1]


CID = 4242


async def test_ids_increase_and_carry_metadata(broker: Broker) -> None:
    first = await broker.publish(CID, "message", "a", message_id=3)
    second = await broker.publish(CID, "message", "b")
    assert second.id == first.id + 1
    assert first.payload == {"event": "message", "data": "a", "id": first.id, "conversation_id": CID, "message_id": 3}
    assert await broker.last_event_id(CID) == second.id


async def test_event_floor(broker: Broker) -> None:
    """After ensure_event_floor(n) every new id is above n, and a lower floor changes nothing."""
    await broker.ensure_event_floor(CID, 100)
    assert (await broker.publish(CID, "message", "x")).id == 101
    await broker.ensure_event_floor(CID, 5)
    assert (await broker.publish(CID, "message", "y")).id == 102


async def test_live_subscribers_all_receive_in_order(broker: Broker) -> None:
    async with broker.subscribe(CID) as one, broker.subscribe(CID) as two:
        sent = [await broker.publish(CID, "message", str(i)) for i in range(10)]
        for subscription in (one, two):
            got = [await subscription.get(timeout=2) for _ in sent]
            assert [e.id for e in got] == [e.id for e in sent]
        assert await one.get(timeout=0.05) is None  # nothing more: a timeout, not a hang


async def test_replay_after_id_then_live(broker: Broker) -> None:
    """Subscribing with `after` yields every buffered event after it, then live ones, no gap or repeat."""
    sent = [await broker.publish(CID, "message", str(i)) for i in range(5)]
    async with broker.subscribe(CID, after=sent[1].id) as subscription:
        sent.append(await broker.publish(CID, "message", "live"))
        got = [await subscription.get(timeout=2) for _ in range(4)]
    assert [e.id for e in got] == [e.id for e in sent[2:]]


async def test_replay_buffer_is_bounded(broker: Broker) -> None:
    sent = [await broker.publish(CID, "message", str(i)) for i in range(80)]
    async with broker.subscribe(CID, after=0) as subscription:
        got = []
        while (event := await subscription.get(timeout=0.2)) is not None:
            got.append(event.id)
    assert got == [e.id for e in sent[-50:]]


async def test_a_resume_past_the_buffer_starts_with_resync(broker: Broker) -> None:
    """A client resuming after an id whose successors the buffer no longer holds gets
    `resync` first (its id just before what follows), then what the buffer holds, then
    live events; resuming from that id, from 0, or with nothing missing: no resync."""
    sent = [await broker.publish(CID, "message", str(i)) for i in range(80)]  # the buffer keeps 50
    async with broker.subscribe(CID, after=sent[5].id) as subscription:
        live = await broker.publish(CID, "message", "live")
        got = [await subscription.get(timeout=2) for _ in range(52)]
    assert got[0] is not None and got[0].type == "resync" and got[0].id == sent[30].id - 1
    assert got[0].payload == {"event": "resync", "data": "", "id": sent[30].id - 1, "conversation_id": CID}
    assert [e.id for e in got[1:] if e] == [e.id for e in sent[30:]] + [live.id]
    # (the live event pushed sent[30] out: the buffer now starts at sent[31])
    for after in (sent[30].id, 0, live.id):
        assert "resync" not in [e.type for e in await broker.resume(CID, after)]
    assert [e.type for e in await broker.resume(CID, sent[5].id)][:2] == ["resync", "message"]


async def test_an_event_published_during_a_resume_is_not_taken_for_missing(broker: Broker,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An event published just after the buffer is read is not missing (it comes live):
    no resync, which would carry its id and have the subscriber drop the event itself.
    (Found by CI: a resumed stream lost one delta.)"""
    first = await broker.publish(CID, "message", "a")
    read_buffer = broker.replay

    async def then_publish(conversation_id: int, after: int) -> list[Event]:
        buffered = await read_buffer(conversation_id, after)
        await broker.publish(CID, "message", "b")
        return buffered

    monkeypatch.setattr(broker, "replay", then_publish)
    assert await broker.resume(CID, first.id) == []


async def test_a_resume_into_an_emptied_buffer(broker: Broker) -> None:
    """Nothing buffered after the id but events were published after it: resync, with the
    latest id, so that the next live event follows it. A truncate that emptied the buffer
    on purpose is itself what a resume from before it gets."""
    first = await broker.publish(CID, "message", "a")
    await broker.publish(CID, "message", "b")
    await broker.clear_replay(CID)
    [resync] = await broker.resume(CID, first.id)
    assert resync.type == "resync" and resync.id == await broker.last_event_id(CID)
    truncate = await broker.publish(CID, "truncate", "", from_message_id=1, through_message_id=2)
    assert [e.type for e in await broker.resume(CID, first.id)] == ["truncate"]
    async with broker.subscribe(CID, after=first.id) as subscription:
        got = await subscription.get(timeout=2)
    assert got is not None and got.id == truncate.id


async def test_slow_subscriber_is_cut_off(broker: Broker) -> None:
    """A subscriber that does not read is cut off once its queue is full; others are unaffected."""
    async with broker.subscribe(CID) as slow, broker.subscribe(CID) as fast:
        for i in range(30):
            await broker.publish(CID, "message", str(i))
            assert (await fast.get(timeout=2)) is not None
        with pytest.raises(SubscriberOverflow):
            while True:
                await slow.get(timeout=2)


async def test_lock_is_exclusive_and_expires(locks: GenerationLocks) -> None:
    assert await locks.acquire(CID, "a", ttl=0.3)
    assert not await locks.acquire(CID, "b", ttl=0.3)
    assert await locks.holder(CID) == "a"
    assert CID in locks.held_here()
    assert await locks.refresh(CID, "a", ttl=0.3)
    assert not await locks.refresh(CID, "b", ttl=0.3)
    await locks.release(CID, "b")  # not the holder: no effect
    assert await locks.holder(CID) == "a"
    await asyncio.sleep(0.4)
    assert await locks.holder(CID) is None
    assert await locks.acquire(CID, "b", ttl=5)
    await locks.release(CID, "b")
    assert await locks.holder(CID) is None
    assert CID not in locks.held_here()


async def test_stop_reaches_the_listener(locks: GenerationLocks) -> None:
    stopped = asyncio.Event()
    assert not await locks.request_stop(CID)
    async with locks.on_stop(CID, stopped.set):
        assert await locks.request_stop(CID)
        await asyncio.wait_for(stopped.wait(), 2)
    assert not await locks.request_stop(CID)


async def test_drop_ends_subscriptions_and_forgets(broker: Broker) -> None:
    await broker.publish(CID, "message", "x")
    async with broker.subscribe(CID) as subscription:
        await broker.drop(CID)
        with pytest.raises(ConversationGone):
            await subscription.get(timeout=2)
    # Forgotten: nothing to replay. (Not by subscribing again: with Redis the process's own
    # word of the deletion may still be on its way back over pub/sub, and it ends that
    # subscription too, as it should: nobody subscribes to a deleted conversation.)
    assert await broker.replay(CID, 0) == []
    assert await broker.last_event(CID) is None


TRICKY = ["plain ", 'quote " and \\ backslash ', "new\nline\r\t", "\u2028\u2029\x85", "é 😀 中文", "\x00\x1f", '","id":9'
          , "</script>"]


async def test_full_response_is_the_answer_byte_for_byte(broker: Broker) -> None:
    """publish_gathered: the full_response every subscriber gets (with Redis, built inside
    Redis from the message events) is exactly the event made from the whole answer."""
    from realtime_llm.events import make_event

    start = await broker.publish(CID, "user_message", "q", message_id=1)
    async with broker.subscribe(CID) as subscription:
        for piece in TRICKY:
            await broker.publish(CID, "message", piece)
        await broker.publish(CID, "done", "Stream finished", reason="stop", message_id=2)
        answer = "".join(TRICKY)
        if hasattr(broker, "redis"):  # it must be built in Redis, not sent whole again
            async def not_whole(*args: object, **kwargs: object) -> None:
                raise AssertionError("publish_gathered sent the whole answer")
            broker._publish = not_whole  # type: ignore[method-assign,assignment]
        sent = await broker.publish_gathered(CID, "full_response", answer,
                                             Gathered("data", "message", start.id, len(TRICKY)), message_id=2)
        received = [await asyncio.wait_for(subscription.get(), 5) for _ in range(len(TRICKY) + 2)][-1]
    expected = make_event(sent.id, "full_response", answer, conversation_id=CID, message_id=2).json
    assert sent.json == expected
    assert received is not None and received.json == expected
    assert received.payload["data"] == answer
    assert [e.json for e in await broker.replay(CID, sent.id - 1)] == [expected]


async def test_dones_reasoning_is_the_thinking_byte_for_byte_between_other_events(broker: Broker) -> None:
    """done's `reasoning` metadata (with Redis, built inside Redis from the reasoning
    events, interleaved with message events) is exactly the event made from the whole text."""
    from realtime_llm.events import make_event

    start = await broker.publish(CID, "user_message", "q", message_id=1)
    async with broker.subscribe(CID) as subscription:
        for i, piece in enumerate(TRICKY):
            await broker.publish(CID, "reasoning", piece)
            await broker.publish(CID, "message", f"answer {i}")
        thinking = "".join(TRICKY)
        if hasattr(broker, "redis"):  # it must be built in Redis, not sent whole again
            async def not_whole(*args: object, **kwargs: object) -> None:
                raise AssertionError("publish_gathered sent the whole thinking")
            broker._publish = not_whole  # type: ignore[method-assign,assignment]
        meta = {"reason": "stop", "reasoning": thinking, "message_id": 2,
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "estimated": True}}
        sent = await broker.publish_gathered(CID, "done", "Stream finished",
                                             Gathered("reasoning", "reasoning", start.id, len(TRICKY)), **meta)
        received = [await asyncio.wait_for(subscription.get(), 5) for _ in range(2 * len(TRICKY) + 1)][-1]
    expected = make_event(sent.id, "done", "Stream finished", conversation_id=CID, **meta).json
    assert sent.json == expected
    assert received is not None and received.json == expected and received.payload["reasoning"] == thinking


async def test_full_response_falls_back_when_the_buffer_lost_the_deltas(broker: Broker) -> None:
    start = await broker.publish(CID, "user_message", "q")
    await broker.publish(CID, "message", "only one of two")
    sent = await broker.publish_gathered(CID, "full_response", "only one of two, and more",
                                         Gathered("data", "message", start.id, 2))
    assert sent.payload["data"] == "only one of two, and more"
    [replayed] = await broker.replay(CID, sent.id - 1)
    assert replayed.payload["data"] == "only one of two, and more"


class DictCeilings:
    """The SQL ceiling's contract, kept in a dict, for the broker alone."""

    def __init__(self) -> None:
        self.ceilings: dict[int, int] = {}
        self.writes = 0

    async def event_ceiling(self, conversation_id: int) -> int:
        return self.ceilings.get(conversation_id, 0)

    async def raise_event_ceiling(self, conversation_id: int, ceiling: int) -> None:
        self.writes += 1
        self.ceilings[conversation_id] = max(ceiling, self.ceilings.get(conversation_id, 0))


async def test_a_lost_counter_restarts_above_every_id_handed_out(broker: Broker) -> None:
    """The counter lost (a new process without Redis, Redis flushed): the next id is above
    every id published before, and the ceiling stays ahead of every id, with one write
    per few hundred events."""
    ceilings = DictCeilings()
    broker.keep_ceilings_in(ceilings)
    ids = [(await broker.publish(CID, "message", str(i))).id for i in range(1200)]
    assert ids == list(range(1, 1201))
    assert ceilings.ceilings[CID] > ids[-1] and ceilings.writes <= 4
    if isinstance(broker, MemoryBroker):  # a process restarted: a new broker, the same SQL
        restarted = MemoryBroker(broker.settings)
        restarted.keep_ceilings_in(ceilings)
        broker = restarted
    else:
        assert isinstance(broker, RedisBroker) and broker.redis is not None
        await broker.redis.delete(broker.key(CID, "seq"), broker.key(CID, "events"))
    assert await broker.last_event_id(CID) >= ids[-1]  # reads only
    after = await broker.publish(CID, "message", "after")
    assert after.id > ids[-1] and ceilings.ceilings[CID] > after.id


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_waiting_readers_sink_takes_live_events_and_the_queue_takes_over_when_it_refuses(
        broker: Broker) -> None:
    """A socket writes the events of a reader that is waiting straight to its connection
    (the sink); one that cannot take them (a full buffer) gets them queued, in order, and
    the sink again once its reader has caught up and waits."""
    taken: list[int] = []
    accepting = True

    def sink(event: Event) -> bool:
        if accepting:
            taken.append(event.id)
        return accepting

    async def delivered(event_id: int) -> None:  # to every subscriber here, so to ours too
        while (await witness.get(timeout=2)).id < event_id:  # type: ignore[union-attr]
            pass

    async with broker.subscribe(CID) as subscription, broker.subscribe(CID) as witness:
        subscription.sink = sink
        reader = asyncio.create_task(subscription.get())
        await asyncio.sleep(0.01)  # it waits
        first = [(await broker.publish(CID, "message", str(i))).id for i in range(3)]
        await until(lambda: taken == first)
        accepting = False
        queued = [(await broker.publish(CID, "message", str(i))).id for i in range(3)]
        assert (await asyncio.wait_for(reader, 2)).id == queued[0]  # type: ignore[union-attr]
        accepting = True  # the reader is not waiting: the rest stay in the queue, in order
        later = (await broker.publish(CID, "message", "later")).id
        await delivered(later)
        got = [await subscription.get(timeout=2) for _ in range(3)]
        assert [e.id for e in got if e is not None] == [*queued[1:], later]
        assert taken == first
        reader = asyncio.create_task(subscription.get())
        await asyncio.sleep(0.01)
        last = (await broker.publish(CID, "message", "last")).id
        await until(lambda: taken == [*first, last])
        assert subscription.last_id == last
        reader.cancel()


async def test_a_subscription_is_bounded_in_bytes_yet_takes_one_large_event() -> None:
    """Events queue until their bytes pass the bound, then the subscriber is cut off; a
    single event larger than the bound (a long answer) still reaches a reader keeping up."""
    from realtime_llm.broker.base import Subscription
    from realtime_llm.events import make_event

    keeping_up = Subscription(CID, max_queue=100, max_bytes=1000)
    keeping_up.deliver(make_event(1, "full_response", "x" * 5000))
    assert (await keeping_up.get(timeout=1)).id == 1  # type: ignore[union-attr]
    lagging = Subscription(CID, max_queue=100, max_bytes=1000)
    for i in range(1, 5):
        lagging.deliver(make_event(i, "message", "y" * 400))
    assert lagging.cut_off.is_set() and isinstance(lagging.failure, SubscriberOverflow)


async def test_get_nowait_takes_what_is_at_hand_in_order_then_the_failure() -> None:
    """What get() would return without waiting: the backlog, then the queue, repeats
    dropped; None once nothing is at hand, and at the end's marker, which get() raises
    (after the events queued before it)."""
    from realtime_llm.broker.base import Subscription
    from realtime_llm.events import make_event

    subscription = Subscription(CID, max_queue=100, backlog=[make_event(i, "message", "b") for i in (1, 2)])
    for i in (2, 3, 4):  # 2: the seam between replay and live
        subscription.deliver(make_event(i, "message", "q"))
    assert subscription.get_nowait().id == 1  # type: ignore[union-attr]
    assert [subscription.get_nowait().id for _ in range(3)] == [2, 3, 4]  # type: ignore[union-attr]
    assert subscription.get_nowait() is None
    subscription.deliver(make_event(5, "message", "q"))
    subscription.end(ConversationGone())
    assert subscription.get_nowait().id == 5 and subscription.get_nowait() is None  # type: ignore[union-attr]
    assert subscription.get_nowait() is None  # the marker stays for get()
    with pytest.raises(ConversationGone):
        await subscription.get(timeout=1)
    with pytest.raises(ConversationGone):
        await subscription.get(timeout=1)
    waiting = Subscription(CID, max_queue=100)
    reader = asyncio.create_task(waiting.get(timeout=5))
    await asyncio.sleep(0.01)
    waiting.deliver(make_event(7, "message", "live"))
    waiting.deliver(make_event(8, "message", "live"))
    assert (await reader).id == 7 and waiting.get_nowait().id == 8  # type: ignore[union-attr]


async def test_a_lapsed_lock_nobody_took_is_its_owners_again(locks: GenerationLocks) -> None:
    """A heartbeat late by more than the ttl (a stalled loop, a busy Redis) keeps the lock
    unless someone else took it meanwhile: only another holder means it is lost."""
    assert await locks.acquire(CID, "a", ttl=0.2)
    await asyncio.sleep(0.3)
    assert await locks.holder(CID) is None  # lapsed: a new generation could take it now
    assert await locks.refresh(CID, "a", ttl=5)
    assert await locks.holder(CID) == "a"
    await locks.release(CID, "a")
    assert await locks.acquire(CID, "b", ttl=0.2)
    await asyncio.sleep(0.3)
    assert await locks.acquire(CID, "c", ttl=5)  # taken by another once lapsed...
    assert not await locks.refresh(CID, "b", ttl=5)  # ...so it is lost to its old owner
    await locks.release(CID, "c")


async def test_get_waits_for_an_event_or_the_timeout_and_serves_one_reader() -> None:
    """get(timeout) returns an event delivered while it waits (at once, not at the
    timeout), None once the timeout passes with nothing, and the failure when fail()
    cuts it off while waiting; a second reader at the same time is a programming error."""
    from realtime_llm.broker.base import Subscription
    from realtime_llm.events import make_event

    subscription = Subscription(CID, max_queue=100)
    started = asyncio.get_running_loop().time()
    assert await subscription.get(timeout=0.2) is None
    assert asyncio.get_running_loop().time() - started >= 0.19
    reader = asyncio.create_task(subscription.get(timeout=5))
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError):
        await subscription.get(timeout=1)
    started = asyncio.get_running_loop().time()
    subscription.deliver(make_event(1, "message", "x"))
    assert (await reader).id == 1 and asyncio.get_running_loop().time() - started < 1  # type: ignore[union-attr]
    reader = asyncio.create_task(subscription.get(timeout=5))
    await asyncio.sleep(0.05)
    subscription.fail(ConversationGone())
    with pytest.raises(ConversationGone):
        await asyncio.wait_for(reader, 1)
    overflowing = Subscription(CID, max_queue=2)
    for i in range(1, 4):
        overflowing.deliver(make_event(i, "message", "y"))
    assert isinstance(overflowing.failure, SubscriberOverflow) and overflowing.get_nowait() is None


async def test_a_kept_lock_is_renewed_while_inside_and_lapses_after(locks: GenerationLocks) -> None:
    """kept_alive renews a 0.3 s lock every 0.1 s: it outlives a second inside, lapses
    once outside (no renewal left armed), and when another holder takes it meanwhile
    the generation is told (on_lost), once."""
    from realtime_llm.locks import kept_alive

    lost: list[str] = []
    assert await locks.acquire(CID, "a", ttl=0.3)
    async with kept_alive(locks, CID, "a", 0.3, lambda: lost.append("a")):
        await asyncio.sleep(1.0)
        assert await locks.holder(CID) == "a"
    await asyncio.sleep(0.5)
    assert await locks.holder(CID) is None and lost == []
    assert await locks.acquire(CID, "b", ttl=0.3)
    async with kept_alive(locks, CID, "b", 0.3, lambda: lost.append("b")):
        await locks.release(CID, "b")
        assert await locks.acquire(CID, "c", ttl=5)
        await asyncio.sleep(0.5)
    assert lost == ["b"] and await locks.holder(CID) == "c"
    await locks.release(CID, "c")


async def test_a_kept_lock_leaves_nothing_for_the_collector(locks: GenerationLocks) -> None:
    """What kept_alive held (on_lost, and through it the generation) is freed when the block
    ends, renewals and all, without waiting for the cyclic collector: its closures once
    made a reference cycle that kept a whole generation alive until a collection."""
    from realtime_llm.locks import kept_alive

    class Generation:
        def stop(self) -> None:
            pass

    def stopper(generation: Generation) -> Callable[[], None]:
        return lambda: generation.stop()  # the only reference to it

    generation = Generation()
    freed = weakref.ref(generation)
    on_lost = stopper(generation)
    del generation
    assert await locks.acquire(CID, "a", ttl=0.3)
    gc.disable()
    try:
        async with kept_alive(locks, CID, "a", 0.3, on_lost):
            await asyncio.sleep(0.25)  # a renewal (at 0.1 s) and the next one armed
        del on_lost
        assert freed() is None
    finally:
        gc.enable()
        await locks.release(CID, "a")


@pytest.mark.parametrize("kind", ["memory", "redis", "cluster"])
async def test_a_settled_answer_is_replayed_for_the_grace_then_resumed_with_resync(
        kind: str, request: pytest.FixtureRequest) -> None:
    """An answer ended (done) is in SQL: its events stay replayable stream.replay_grace_seconds
    (gap-free resume), then go; a resume from among them gets `resync` (re-read history),
    one from the last id nothing, and the ids go on from where they were."""
    cluster = request.getfixturevalue("redis_cluster") if kind == "cluster" else None
    settings = broker_settings(kind, cluster)
    settings = settings.replace(stream={"replay_grace_seconds": 1})
    async with contextlib.AsyncExitStack() as stack:
        client = redis_client(settings.redis) if settings.redis.enabled else None
        if client is not None:
            stack.push_async_callback(client.aclose)
        broker, _ = await open_broker(settings, client, stack)
        sent = [await broker.publish(CID, "message", f"m{i}") for i in range(3)]
        done = await broker.publish(CID, "done", "Stream finished")
        assert [e.id for e in await broker.resume(CID, sent[0].id)] == [sent[1].id, sent[2].id, done.id]
        await asyncio.sleep(2.5)  # (the in-process sweep runs every grace/2; Redis expires the key)
        assert [(e.type, e.id) for e in await broker.resume(CID, sent[0].id)] == [("resync", done.id)]
        assert await broker.resume(CID, done.id) == []
        if client is not None:  # what an idle conversation keeps in Redis: its counter
            assert not await client.exists(f"{settings.redis.key_prefix}:{{conv:{CID}}}:events")
        assert (await broker.publish(CID, "user_message", "next")).id == done.id + 1


async def test_the_idle_sweep_keeps_the_buffer_of_a_running_generation() -> None:
    """In-process: a conversation nobody watches loses its replay buffer after
    replay_ttl_seconds, unless its generation is still running (clients resume from it)."""
    stream = Settings().replace(stream={"replay_ttl_seconds": 1, "replay_grace_seconds": 1}).stream
    running: set[int] = {CID}
    broker = MemoryBroker(stream, generating=lambda: running)
    await broker.start()
    try:
        await broker.publish(CID, "message", "kept")
        await broker.publish(CID + 1, "message", "swept")
        await asyncio.sleep(1.8)  # the sweep runs every ttl/2
        assert [e.payload["data"] for e in await broker.replay(CID, 0)] == ["kept"]
        assert await broker.replay(CID + 1, 0) == []
    finally:
        await broker.close()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_a_pubsub_connection_killed_mid_stream_never_leaves_a_silent_gap(
        kind: str, request: pytest.FixtureRequest) -> None:
    """Redis drops the process's pub/sub connection (CLIENT KILL, a proxy's timeout, a
    failover) and an event is published before it is back: the subscription either gets
    every event or ends (BrokerUnavailable: the client resumes from the replay buffer),
    never goes on past a gap."""
    cluster = request.getfixturevalue("redis_cluster") if kind == "cluster" else None
    settings = broker_settings(kind, cluster)
    async with contextlib.AsyncExitStack() as stack:
        if kind == "redis":  # its own: every pub/sub connection on it is killed
            private = PrivateRedis()
            stack.callback(private.stop)
            settings = settings.replace(redis={"url": private.url})
        client = redis_client(settings.redis)
        stack.push_async_callback(client.aclose)
        broker, _ = await open_broker(settings, client, stack)
        for _ in range(5):
            async with broker.subscribe(CID) as subscription:
                first = await broker.publish(CID, "message", "before")
                assert (await subscription.get(timeout=2)).id == first.id
                if isinstance(client, RedisCluster):  # (the conversation's shard's connection)
                    killed = sum((await client.client_kill_filter(
                        _type="pubsub", skipme=True, target_nodes=RedisCluster.ALL_NODES)).values())
                else:
                    killed = await client.client_kill_filter(_type="pubsub", skipme=True)
                assert killed == 1
                sent = [await broker.publish(CID, "message", f"after {i}") for i in range(3)]
                await asyncio.sleep(0.3)  # reconnected by now
                sent.append(await broker.publish(CID, "message", "later"))
                got = []
                try:
                    while len(got) < len(sent):
                        event = await subscription.get(timeout=2)
                        assert event is not None, f"got {[e.id for e in got]} of {[e.id for e in sent]}"
                        got.append(event)
                except BrokerUnavailable:
                    pass
                assert [e.id for e in got] == [e.id for e in sent][:len(got)]
