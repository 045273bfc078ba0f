"""The shared resources of one process, opened together and closed together."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import AsyncIterator

import anyio.to_thread
from databases import Database

from realtime_llm.auth import PasswordHasher, TokenIssuer
from realtime_llm.catalog import ModelCatalog
from realtime_llm.config import Settings
from realtime_llm.keys import APIKeyBox, load_or_create_secret, secret_file_path
from realtime_llm.store.conversations import ConversationStore
from realtime_llm.store.database import create_database, migrate
from realtime_llm.store.users import RevocationStore, UserStore

logger = logging.getLogger("realtime_llm")


@dataclass
class Services:
    """Everything a request handler may reach, through `request.app.state.services`."""

    settings: Settings
    database: Database
    users: UserStore
    revocations: RevocationStore
    conversations: ConversationStore
    hasher: PasswordHasher
    tokens: TokenIssuer
    catalog: ModelCatalog


def server_secret(settings: Settings) -> str:
    if settings.jwt.secret:
        return settings.jwt.secret
    return load_or_create_secret(secret_file_path(settings))


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    secret = server_secret(settings)
    database = create_database(settings)
    await database.connect()
    try:
        await migrate(database)
        hasher = await anyio.to_thread.run_sync(PasswordHasher, settings.auth.bcrypt_rounds)
        yield Services(
            settings=settings,
            database=database,
            users=UserStore(database),
            revocations=RevocationStore(database),
            conversations=ConversationStore(database, APIKeyBox(secret)),
            hasher=hasher,
            tokens=TokenIssuer(secret, settings.jwt.ttl_seconds),
            catalog=ModelCatalog(settings.llm.providers),
        )
    finally:
        await database.disconnect()
