"""The session watch's bookkeeping, in memory: a stream of a token that was ended a moment
before it registered stays watched after the older streams of that token unwind."""
from __future__ import annotations

from realtime_llm.auth import TokenClaims
from realtime_llm.sessions import SessionWatch


class Ended:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_the_first_stream_unwinding_leaves_the_second_registered() -> None:
    watch = SessionWatch(revocations=None, users=None)  # type: ignore[arg-type]
    claims = TokenClaims(user_id=7, jti="j2", expires_at=2**40)
    first, second = Ended(), Ended()
    outer = watch.watch(claims, first)
    outer.__enter__()
    watch.end_session("j2")
    inner = watch.watch(claims, second)
    inner.__enter__()
    outer.__exit__(None, None, None)  # the ended first stream unwinds after the second registered
    watch.end_user_sessions(7, epoch=1)  # a password change: the second is still found
    assert second.count == 1
    inner.__exit__(None, None, None)
