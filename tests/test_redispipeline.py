"""The pipelined connection for Lua scripts (redispipeline.py), on real redis-servers:
answers reach their own callers, a Redis that forgot the scripts, errors, a Redis that
goes away or stops answering, a password and a database, a cancelled caller."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from typing import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from realtime_llm.config import RedisSettings
from realtime_llm.redisclient import REDIS_FAILURES, redis_client
from realtime_llm.redispipeline import MAX_UNSENT_BYTES, PipelinedConnection, PipelinedRedis, PipelinedScript
from tests.backends import PrivateRedis, redis_url
from tests.servers import free_port

pytestmark = pytest.mark.anyio

# The key's value after adding ARGV[1], and ARGV[2] back: each caller can tell its own answer.
ADD = "return {redis.call('INCRBY', KEYS[1], ARGV[1]), ARGV[2]}"
FAIL = "return redis.error_reply('refused: ' .. ARGV[1])"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    opened = redis_client(RedisSettings(url=redis_url(), socket_timeout=3))
    try:
        yield opened
    finally:
        await opened.aclose()


def key() -> str:
    return f"rtllm-test-pipe-{uuid.uuid4().hex[:8]}"


async def test_a_single_redis_runs_its_scripts_pipelined(client: aioredis.Redis) -> None:
    assert isinstance(client, PipelinedRedis)
    add, name = client.register_script(ADD), key()
    assert isinstance(add, PipelinedScript)  # and so are the scripts of the tests below
    try:
        assert await add(keys=[name], args=[5, "x"]) == [5, b"x"]
        assert await client.get(name) == b"5"  # the pool's commands see the same Redis
    finally:
        await client.delete(name)


async def test_concurrent_calls_each_get_their_own_answer(client: aioredis.Redis) -> None:
    add = client.register_script(ADD)
    names = [key() for _ in range(20)]

    async def caller(n: int) -> list[object]:
        return [await add(keys=[names[n % 20]], args=[n, f"call-{n}-{step}"]) for step in range(5)]

    try:
        answers = await asyncio.gather(*(caller(n) for n in range(200)))
        for n, replies in enumerate(answers):
            assert [reply[1] for reply in replies] == [f"call-{n}-{step}".encode() for step in range(5)]
        totals = [int(await client.get(name) or 0) for name in names]
        assert totals == [5 * sum(range(i, 200, 20)) for i in range(20)]  # every call ran once
    finally:
        await client.delete(*names)


async def test_a_script_redis_forgot_is_sent_again_and_errors_are_raised(client: aioredis.Redis) -> None:
    add, fail, name = client.register_script(ADD), client.register_script(FAIL), key()
    try:
        assert await add(keys=[name], args=[1, "a"]) == [1, b"a"]
        await client.script_flush()  # as after a restart
        assert await add(keys=[name], args=[1, "b"]) == [2, b"b"]
        with pytest.raises(ResponseError, match="refused: no"):
            await fail(args=["no"])
        assert await add(keys=[name], args=[1, "c"]) == [3, b"c"]  # the connection goes on
    finally:
        await client.delete(name)


async def test_a_cancelled_caller_leaves_the_answers_in_order(client: aioredis.Redis) -> None:
    add, name = client.register_script(ADD), key()
    try:
        assert await add(keys=[name], args=[0, "connected"]) == [0, b"connected"]
        first = asyncio.ensure_future(add(keys=[name], args=[1, "cancelled"]))
        second = asyncio.ensure_future(add(keys=[name], args=[1, "kept"]))
        for _ in range(3):  # both written to the socket
            await asyncio.sleep(0)
        first.cancel()  # its answer comes all the same, and goes to no one
        assert await second == [2, b"kept"]
        assert await add(keys=[name], args=[1, "next"]) == [3, b"next"]
    finally:
        await client.delete(name)


async def test_redis_going_away_fails_the_calls_and_its_return_is_used() -> None:
    private = PrivateRedis()
    connection = PipelinedConnection(private.url, timeout=3)
    try:
        assert await connection.call("SET", "k", "1") == b"OK"
        private.stop()
        started = time.monotonic()
        with pytest.raises(REDIS_FAILURES):
            await connection.call("GET", "k")
        assert time.monotonic() - started < 2  # at once, not after the timeout
        private = PrivateRedis(port=private.port)
        assert await connection.call("GET", "k") is None  # a new connection, to the empty Redis
    finally:
        await connection.close()
        private.stop()


async def test_a_redis_that_does_not_answer_times_out_every_call_waiting() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # reads everything, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    try:
        started = time.monotonic()
        async with asyncio.timeout(5):  # not a hang
            results = await asyncio.gather(*(connection.call("PING") for _ in range(50)), return_exceptions=True)
        assert all(isinstance(result, REDIS_FAILURES) for result in results), results
        assert 0.4 < time.monotonic() - started < 2
        started = time.monotonic()
        async with asyncio.timeout(5):  # not a hang
            with pytest.raises(RedisTimeoutError):  # the next call connects anew, and waits again
                await connection.call("PING")
        assert 0.4 < time.monotonic() - started < 2
    finally:
        await connection.close()
        server.close()


async def test_a_password_and_a_database_from_the_url() -> None:
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--requirepass", "s3cret"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plain = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/3")
    right = PipelinedConnection(f"redis://:s3cret@127.0.0.1:{port}/3", timeout=3)
    wrong = PipelinedConnection(f"redis://:nope@127.0.0.1:{port}/3", timeout=3)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                await plain.ping()
                break
            except REDIS_FAILURES:
                assert time.monotonic() < deadline, "redis-server with a password did not start"
                await asyncio.sleep(0.05)
        assert await right.call("SET", "k", "in 3") == b"OK"
        assert await plain.get("k") == b"in 3"  # database 3, as the URL says
        with pytest.raises(REDIS_FAILURES):
            await wrong.call("GET", "k")
    finally:
        await right.close()
        await wrong.close()
        await plain.aclose()
        process.terminate()
        process.wait(10)


async def test_a_redis_that_does_not_read_is_bounded_in_bytes_and_closing_ends_a_connect() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing: what is written piles up in the sender's buffer
        await asyncio.sleep(3600)

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=3)
    waiting = []
    try:
        chunk = b"x" * 2**20
        with pytest.raises(RedisConnectionError, match="not reading"):
            for _ in range(4 * MAX_UNSENT_BYTES // len(chunk)):
                waiting.append(asyncio.ensure_future(connection.call("SET", "k", chunk)))
                await asyncio.sleep(0.001)  # written out, as far as the socket takes it
                if waiting[-1].done():
                    waiting.pop().result()
        password = PipelinedConnection(f"redis://:pw@127.0.0.1:{port}/0", timeout=3)
        connecting = asyncio.ensure_future(password.call("PING"))  # its AUTH is never answered
        await asyncio.sleep(0.1)
        await password.close()
        with pytest.raises(RedisConnectionError):  # a Redis error, not a cancelled caller
            await connecting
    finally:
        await connection.close()
        for call in waiting:
            with contextlib.suppress(Exception):
                await call
        server.close()


async def test_a_closed_connection_refuses_calls() -> None:
    connection = PipelinedConnection(redis_url(), timeout=3)
    assert await connection.call("PING") == b"PONG"
    await connection.close()
    with pytest.raises(REDIS_FAILURES):
        await connection.call("PING")
