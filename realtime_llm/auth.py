"""Passwords (bcrypt, in a worker thread) and access tokens (JWT HS256)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid
from dataclasses import dataclass
from typing import Callable, TypeVar

import anyio
import anyio.to_thread
import bcrypt
import jwt

T = TypeVar("T")
ALGORITHM = "HS256"
# bcrypt runs on at most this many threads at once, leaving a core to the event loop: 50
# logins at once on 40 threads starved it of CPU (streams' delay p99 +1.5 s, bench.login_flood).
HASHING_THREADS = max(1, (os.cpu_count() or 2) - 1)


# A hash imported from the Go original (import-original): bcrypt over the password itself
# ("$2a$", cost 10), kept behind this mark until its user's next login replaces it.
ORIGINAL = "original:"


class PasswordHasher:
    """bcrypt over an HMAC-SHA256 of the password.

    bcrypt reads at most 72 bytes; hashing first means every byte of a long password
    counts, and the base64 digest (44 bytes, no NUL) always fits. The HMAC key is a
    constant "pepper" that only marks the scheme, not a secret.

    An imported hash of the original's (ORIGINAL) is checked as it is, padded with as much
    bcrypt work again as one check of ours costs: a login as an imported user who has not
    come back yet takes as long as one as anybody else, or nobody.
    """

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        # Checked against when the user does not exist, so that answer takes as long.
        self._dummy_hash = bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds))
        self._padding: dict[int, bytes] = {}  # a dummy hash per cost of imported hashes
        self._threads: anyio.CapacityLimiter | None = None  # made on first use, in the event loop

    async def _run(self, function: Callable[..., T], *args: bytes) -> T:
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(HASHING_THREADS)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._threads)

    @staticmethod
    def _prehash(password: str) -> bytes:
        digest = hmac.new(b"realtime-llm/password/v1", password.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest)

    async def hash(self, password: str) -> str:
        salt = bcrypt.gensalt(self.rounds)
        hashed = await self._run(bcrypt.hashpw, self._prehash(password), salt)
        return hashed.decode()

    async def verify(self, password: str, hashed: str | None) -> bool:
        if hashed is not None and hashed.startswith(ORIGINAL):
            return await self._run(self._check_original, password.encode(), hashed[len(ORIGINAL):].encode())
        target = hashed.encode() if hashed else self._dummy_hash
        ok = await self._run(bcrypt.checkpw, self._prehash(password), target)
        return ok and hashed is not None

    @staticmethod
    def outdated(hashed: str) -> bool:
        """A hash to replace with one of ours once its password is known (at a login)."""
        return hashed.startswith(ORIGINAL)

    def _check_original(self, password: bytes, hashed: bytes) -> bool:
        try:
            cost = int(hashed[4:6])
            # Go's bcrypt of the time read the first 72 bytes and ignored the rest.
            ok = bcrypt.checkpw(password[:72], hashed)
        except ValueError:  # not a bcrypt hash after all (import-original lets none in): as long as ours
            bcrypt.checkpw(b"no such user", self._dummy_hash)
            return False
        if cost < self.rounds:  # 2**rounds units of work, as a check of ours: 2**cost done
            if cost not in self._padding:
                self._padding[cost] = bcrypt.hashpw(b"padding", bcrypt.gensalt(cost))
            for _ in range(2 ** (self.rounds - cost) - 1):
                bcrypt.checkpw(b"padding", self._padding[cost])
        return ok


@dataclass(frozen=True)
class TokenClaims:
    """What a bearer token stands for: a login session (a JWT) or an API token."""

    user_id: int
    jti: str  # an API token's: "api:<token_id>"
    expires_at: int
    epoch: int = 0  # a login session's: the user's session epoch when it was issued
    api_token: bool = False

    @property
    def token_id(self) -> str:
        return self.jti.removeprefix(API_JTI)


API_JTI = "api:"
API_TOKEN_PREFIX = "rtllm_"
NEVER = 2**53  # the expiry of an API token without one


def api_token_hash(token: str) -> str:
    """API tokens are long random strings: a fast hash keeps them from the database's readers."""
    return hashlib.sha256(token.encode()).hexdigest()


class InvalidToken(Exception):
    pass


# Tokens already checked, with their claims: decoding and checking the signature again on
# every request was 2.5 % of the server's CPU at 50 streams (py-spy, bench.relay_cpu). Only
# tokens whose signature checked go in (ours, of a fixed size), so the bound is on count.
VERIFIED_CACHE = 10_000


class TokenIssuer:
    """Issues and checks HS256 tokens; the algorithm is pinned on decode (no "none"). A
    token checked once is known again by its text until it expires (whether it has been
    revoked is the database's to say: UserStore.holder, every request)."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        self._verified: dict[str, TokenClaims] = {}

    def issue(self, user_id: int, epoch: int = 0) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            "sep": epoch,  # the user's session epoch: a password change ends older tokens
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> TokenClaims:
        known = self._verified.get(token)
        if known is not None:
            if known.expires_at > time.time():
                return known
            del self._verified[token]
        claims = self._decode(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _decode(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp", "iat", "jti"]},
            )
            user_id = _user_id(claims["sub"])
            jti = claims["jti"]
            if not isinstance(jti, str) or not jti or jti.startswith(API_JTI):
                raise InvalidToken("bad jti")
            epoch = claims.get("sep", 0)  # (tokens from before epochs: 0)
            if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 2**31:
                raise InvalidToken("bad sep")
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from None
        return TokenClaims(user_id=user_id, jti=jti, expires_at=int(claims["exp"]), epoch=epoch)


MAX_USER_ID = 2**53 - 1  # ids are below 2**53 (DESIGN.md); a larger `sub` overflowed the database's integer


def _user_id(sub: object) -> int:
    """A token's `sub`: the decimal id we wrote, nothing int() would also take (" 7", "+7", "7_0")."""
    if not isinstance(sub, str) or not (sub.isascii() and sub.isdigit()) or len(sub) > 16:
        raise InvalidToken("bad sub")
    user_id = int(sub)
    if not 1 <= user_id <= MAX_USER_ID:
        raise InvalidToken("sub out of range")
    return user_id
