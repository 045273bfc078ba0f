"""Streams end when the right to watch them ends: their token logged out, or expired.

A stream or socket is authorised once, when it opens, and may then run for hours. Each
one registers the token it was opened with here. Once a second this process asks SQL for
the tokens revoked lately (by a logout in any process: they all share the database) and
checks the expiry of the tokens it watches; the streams of each ended token are ended
through their subscription, so SSE and WebSocket end the same way (a socket closes 4401).
Polling the database keeps this correct with the in-process broker, with Redis, and
across a Redis outage; one indexed query a second, only while streams are open.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable, Iterator

from realtime_llm.auth import TokenClaims
from realtime_llm.store.users import RevocationStore
from realtime_llm.tasks import stop_task

logger = logging.getLogger("realtime_llm.sessions")

POLL_SECONDS = 1.0
# Revocations are looked up this far back on every poll, so clocks of several machines
# that differ by less than this cannot hide one (the answer is the last minute's logouts).
CLOCK_SLACK_SECONDS = 60.0


class SessionWatch:
    def __init__(self, revocations: RevocationStore, poll_seconds: float = POLL_SECONDS) -> None:
        self.revocations = revocations
        self.poll_seconds = poll_seconds
        self._watched: dict[str, dict[int, Callable[[], None]]] = {}  # jti -> ending callbacks
        self._expires: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="session-watch")

    async def close(self) -> None:
        await stop_task(self._task)

    @contextlib.contextmanager
    def watch(self, claims: TokenClaims, end: Callable[[], None]) -> Iterator[None]:
        """While inside, `end()` is called (once) when the token is revoked or expires."""
        callbacks = self._watched.setdefault(claims.jti, {})
        key = id(end)
        callbacks[key] = end
        self._expires[claims.jti] = claims.expires_at
        try:
            yield
        finally:
            callbacks.pop(key, None)
            if not callbacks:
                self._watched.pop(claims.jti, None)
                self._expires.pop(claims.jti, None)

    def end_session(self, jti: str) -> None:
        """End every stream of this process opened with `jti` (logout, here or elsewhere)."""
        for end in list(self._watched.pop(jti, {}).values()):
            end()
        self._expires.pop(jti, None)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            if not self._watched:
                continue
            now = time.time()
            for jti in [j for j, expires in self._expires.items() if expires <= now]:
                self.end_session(jti)
            try:
                revoked = await self.revocations.revoked_since(now - CLOCK_SLACK_SECONDS)
            except Exception as exc:  # the database busy or away: the next poll catches up
                logger.warning("could not read revoked tokens (%s)", type(exc).__name__)
                continue
            for jti in revoked & self._watched.keys():
                self.end_session(jti)
