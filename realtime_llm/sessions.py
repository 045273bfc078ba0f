"""Streams end when the right to watch them ends: their token logged out, deleted (an API
token) or expired, or every login session of its user ended (a password change).

A stream or socket is authorised once, when it opens, and may then run for hours. Each
one registers the token it was opened with here. Once a second this process asks SQL for
the tokens revoked lately (by a logout in any process: they all share the database) and
the users whose sessions were ended lately, and checks the expiry of the tokens it
watches; the streams of each ended token are ended through their subscription, so SSE
and WebSocket end the same way (a socket closes 4401). Polling the database keeps this
correct with the in-process broker, with Redis, and across a Redis outage; two indexed
queries a second, only while streams are open.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable, Iterator

from realtime_llm.auth import TokenClaims
from realtime_llm.store.users import RevocationStore, UserStore
from realtime_llm.tasks import stop_task

logger = logging.getLogger("realtime_llm.sessions")

POLL_SECONDS = 1.0
# Revocations are looked up this far back on every poll, so clocks of several machines
# that differ by less than this cannot hide one (the answer is the last minute's logouts).
CLOCK_SLACK_SECONDS = 60.0


class SessionWatch:
    def __init__(self, revocations: RevocationStore, users: UserStore, poll_seconds: float = POLL_SECONDS) -> None:
        self.revocations = revocations
        self.users = users
        self.poll_seconds = poll_seconds
        self._watched: dict[str, dict[int, Callable[[], None]]] = {}  # jti -> ending callbacks
        self._claims: dict[str, TokenClaims] = {}
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
        self._claims[claims.jti] = claims
        try:
            yield
        finally:
            callbacks.pop(key, None)
            # Only if still this token's: once the token was ended, another stream of it (one
            # authorised a moment before) may have registered anew, and must stay watched.
            if not callbacks and self._watched.get(claims.jti) is callbacks:
                self._watched.pop(claims.jti, None)
                self._claims.pop(claims.jti, None)

    def end_session(self, jti: str) -> None:
        """End every stream of this process opened with `jti` (logout, here or elsewhere)."""
        for end in list(self._watched.pop(jti, {}).values()):
            end()
        self._claims.pop(jti, None)

    def end_user_sessions(self, user_id: int, epoch: int) -> None:
        """End every stream of this process opened with a login token of the user's from
        before `epoch` (a password change, log out everywhere); API tokens stay."""
        for jti, claims in list(self._claims.items()):
            if claims.user_id == user_id and not claims.api_token and claims.epoch < epoch:
                self.end_session(jti)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            if not self._watched:
                continue
            now = time.time()
            for jti in [j for j, claims in self._claims.items() if claims.expires_at <= now]:
                self.end_session(jti)
            try:
                revoked = await self.revocations.revoked_since(now - CLOCK_SLACK_SECONDS)
                ended = await self.users.sessions_ended_since(now - CLOCK_SLACK_SECONDS)
            except Exception as exc:  # the database busy or away: the next poll catches up
                logger.warning("could not read revoked tokens (%s)", type(exc).__name__)
                continue
            for jti in revoked & self._watched.keys():
                self.end_session(jti)
            for user_id, epoch in ended.items():
                self.end_user_sessions(user_id, epoch)
