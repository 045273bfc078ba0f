"""The one event shape of SSE and WebSocket, serialised once per event."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from websockets.frames import Frame, Opcode

USER_MESSAGE = "user_message"
MESSAGE = "message"
REASONING = "reasoning"  # a delta of the model's thinking
DONE = "done"
FULL_RESPONSE = "full_response"
ERROR = "error"
TITLE = "title"
TRUNCATE = "truncate"  # shown messages from `from_message_id` on give way (edit, regenerate)
BRANCH = "branch"  # another branch is the active one: re-read the history
RESYNC = "resync"  # a resume from events the replay buffer no longer holds: re-read the history
# After these the conversation's events are in SQL (an answer saved, or ended; another
# branch shown): its replay buffer is kept only stream.replay_grace_seconds more. (An
# answer ends with done, then full_response.)
SETTLING = frozenset({DONE, FULL_RESPONSE, ERROR, BRANCH})

# Events after which a generation has ended, one way or the other.
TERMINAL = frozenset({FULL_RESPONSE, ERROR})


@dataclass(frozen=True, slots=True)
class Event:
    """One published event: its id, its type and its JSON object, already encoded."""

    id: int
    type: str
    json: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return orjson.loads(self.json)  # type: ignore[no-any-return]


def encode_json(body: Any) -> bytes:
    """JSON with U+2028, U+2029 and U+0085 escaped: they are valid raw in JSON, but many
    line readers (Python's splitlines, so httpx and httpx-sse) break lines on them."""
    raw = orjson.dumps(body)
    if b"\xe2\x80\xa8" in raw or b"\xe2\x80\xa9" in raw or b"\xc2\x85" in raw:
        raw = raw.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
        raw = raw.replace(b"\xc2\x85", b"\\u0085")
    return raw


def make_event(event_id: int, event_type: str, data: str, **metadata: Any) -> Event:
    body = {"event": event_type, "data": data, "id": event_id, **metadata}
    return Event(event_id, event_type, encode_json(body))


def event_template(event_type: str, data: str, **metadata: Any) -> tuple[bytes, bytes]:
    """The event's JSON in two halves around its id, for a broker that assigns the id
    elsewhere (inside Redis): prefix + str(id) + suffix == make_event(id, ...).json."""
    prefix = encode_json({"event": event_type, "data": data})[:-1] + b',"id":'
    suffix = b"," + encode_json(metadata)[1:] if metadata else b"}"
    return prefix, suffix


def local_json(event_type: str, data: str, **metadata: Any) -> bytes:
    """A frame for one client only (ready, pong, its own errors). It has no id: it is not
    part of the conversation's sequence, so a client's last event id stays valid."""
    return encode_json({"event": event_type, "data": data, **metadata})


def sse_frame(event: Event) -> bytes:
    """A standards-conforming SSE frame; orjson escapes every CR and LF inside the JSON."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type.encode(), event.json)


_last_frame: tuple[Event | None, bytes] = (None, b"")


def ws_frame(event: Event) -> bytes:
    """The event as a server's WebSocket text frame (unmasked, no extension), built once
    for all the sockets it goes to: a broker hands each of them the same Event in turn.
    (One is kept, until the next: at most a full_response of stream.max_answer_chars.) The
    one kept is found by identity: functools.lru_cache hashed the Event, a dataclass's
    hash written in Python, for every socket (0.6 against 0.3 µs of a fan-out's Python a
    socket, a timeit)."""
    global _last_frame
    last, frame = _last_frame
    if last is not event:
        frame = Frame(Opcode.TEXT, event.json).serialize(mask=False)
        _last_frame = (event, frame)
    return frame


SSE_KEEPALIVE = b": ping\n\n"
