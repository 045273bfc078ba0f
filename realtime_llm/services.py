"""The shared resources of one process, opened together and closed together."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import anyio.to_thread
from databases import Database

from realtime_llm.auth import PasswordHasher, TokenIssuer
from realtime_llm.broker import Broker, GenerationLocks, open_broker
from realtime_llm.broker.base import ShuttingDown
from realtime_llm.cache import HistoryCache
from realtime_llm.catalog import ModelCatalog
from realtime_llm.config import Settings
from realtime_llm.filesweeper import FileSweeper
from realtime_llm.generation import GenerationEngine
from realtime_llm.heaptrim import HeapTrimmer
from realtime_llm.keys import APIKeyBox, load_or_create_secret, secret_file_path
from realtime_llm.providers import Provider, create_provider
from realtime_llm.ratelimit import RateLimiter, RedisRateLimiter
from realtime_llm.redisclient import RedisClient, redis_client
from realtime_llm.seats import Seats, create_seats
from realtime_llm.sessions import SessionWatch
from realtime_llm.store.apitokens import ApiTokenStore
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.database import create_database, has_sqlite_search_index, migrate
from realtime_llm.store.searchindex import SearchIndex
from realtime_llm.store.shares import ShareStore
from realtime_llm.store.users import RevocationStore, UserStore
from realtime_llm.tickets import RedisTickets, Tickets

logger = logging.getLogger("realtime_llm")


@dataclass
class Services:
    """Everything a request handler may reach, through `request.app.state.services`."""

    settings: Settings
    database: Database
    users: UserStore
    api_tokens: ApiTokenStore
    tickets: Tickets  # single-use stream tickets for browsers
    shares: ShareStore  # read-only share links
    revocations: RevocationStore
    conversations: ConversationStore
    hasher: PasswordHasher
    tokens: TokenIssuer
    catalog: ModelCatalog
    broker: Broker
    locks: GenerationLocks  # one generation per conversation; stop requests
    providers: dict[str, Provider]
    engine: GenerationEngine
    limiter: RateLimiter
    seats: Seats  # open WebSockets per user
    sessions: SessionWatch  # ends streams whose token is logged out or expires

    async def shut_down(self, grace: float, cut_short: Callable[[], bool] = lambda: False) -> None:
        """The graceful part of stopping this process (its listening socket already closed).

        Streams and sockets watching no answer running here end at once (sockets close with
        1001), so their clients reconnect to another process and resume from their last event
        id. Running answers get `grace` seconds to finish, then are stopped and saved; once
        their last events are delivered, the remaining streams and sockets end the same way.
        """
        self.broker.end_subscriptions(ShuttingDown(), keep=self.engine.running_conversations())
        await self.engine.drain(grace, cut_short)
        await asyncio.sleep(0.1)  # with Redis, the last events come back over pub/sub
        self.broker.end_subscriptions(ShuttingDown())
        await asyncio.sleep(0.2)  # let the closing frames go out


def create_history_cache(settings: Settings, redis: RedisClient | None) -> HistoryCache:
    """Histories are cached in Redis when there is one; one process alone reads SQL directly."""
    if redis is None:
        return HistoryCache()
    from realtime_llm.cache import RedisHistoryCache

    # Kept as briefly as an ended answer's events: Redis holds little per idle conversation.
    return RedisHistoryCache(redis, settings.redis.key_prefix, max(1, round(settings.stream.replay_grace_seconds)))


def create_rate_limiter(settings: Settings, redis: RedisClient | None) -> RateLimiter:
    """Counted in Redis when there is one, so every process enforces the same limits."""
    if redis is None:
        return RateLimiter()
    return RedisRateLimiter(redis, settings.redis.key_prefix)


def server_secret(settings: Settings) -> str:
    if settings.jwt.secret:
        return settings.jwt.secret
    return load_or_create_secret(secret_file_path(settings))


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open everything in dependency order; close in reverse, whatever fails."""
    secret = server_secret(settings)
    async with contextlib.AsyncExitStack() as stack:
        database = create_database(settings)
        await database.connect()
        stack.push_async_callback(database.disconnect)
        await migrate(database)

        redis = redis_client(settings.redis) if settings.redis.enabled else None
        if redis is not None:
            stack.push_async_callback(redis.aclose)
        broker, locks = await open_broker(settings, redis, stack)

        providers = {p.name: create_provider(p) for p in settings.llm.providers}
        for provider in providers.values():
            await provider.start()
            stack.push_async_callback(provider.close)

        fts = await has_sqlite_search_index(database)
        conversations = ConversationStore(database, APIKeyBox(secret), create_history_cache(settings, redis), fts=fts)
        broker.keep_ceilings_in(conversations)  # event ids are reserved in SQL
        if fts:  # written behind the messages, by every process
            search_index = SearchIndex(database)
            await search_index.start()
            stack.push_async_callback(search_index.close)
        catalog = ModelCatalog(settings.llm.providers)
        engine = GenerationEngine(settings, conversations, broker, locks, providers, catalog)
        stack.push_async_callback(engine.close)

        seats = create_seats(settings.limits, redis, settings.redis.key_prefix)
        await seats.start()
        stack.push_async_callback(seats.close)

        sweeper = FileSweeper(conversations.files, settings.limits.unattached_file_ttl_seconds)
        await sweeper.start()
        stack.push_async_callback(sweeper.close)

        revocations = RevocationStore(database)
        users = UserStore(database)
        sessions = SessionWatch(revocations, users)
        await sessions.start()
        stack.push_async_callback(sessions.close)

        trimmer = HeapTrimmer()
        await trimmer.start()
        stack.push_async_callback(trimmer.close)

        hasher = await anyio.to_thread.run_sync(PasswordHasher, settings.auth.bcrypt_rounds)
        yield Services(
            settings=settings,
            database=database,
            users=users,
            api_tokens=ApiTokenStore(database),
            shares=ShareStore(database),
            tickets=RedisTickets(redis, settings.redis.key_prefix) if redis is not None else Tickets(),
            revocations=revocations,
            conversations=conversations,
            hasher=hasher,
            tokens=TokenIssuer(secret, settings.jwt.ttl_seconds),
            catalog=catalog,
            broker=broker,
            locks=locks,
            providers=providers,
            engine=engine,
            limiter=create_rate_limiter(settings, redis),
            seats=seats,
            sessions=sessions,
        )
