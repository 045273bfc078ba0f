"""Reading our SSE streams strictly: every frame exactly `id:`, `event:`, `data:` and a blank line."""
from __future__ import annotations

from typing import Any, Iterator

import orjson


def parse_frame(lines: list[str]) -> dict[str, Any] | None:
    """One frame's event; None for a comment-only frame. Asserts the framing DESIGN.md fixes."""
    if all(line.startswith(":") for line in lines):
        return None
    fields = [line.split(": ", 1) for line in lines]
    names = [f[0] for f in fields]
    values = dict(fields)
    if names == ["event", "data"]:  # a local error frame: no id, so Last-Event-ID stays put
        payload = orjson.loads(values["data"])
        assert payload["event"] == values["event"] == "error"
        return payload  # type: ignore[no-any-return]
    assert names == ["id", "event", "data"], lines
    payload = orjson.loads(values["data"])
    assert payload["event"] == values["event"]
    assert payload["id"] == int(values["id"])
    assert isinstance(payload["data"], str)
    return payload  # type: ignore[no-any-return]


def iter_frames(line_iter: Iterator[str]) -> Iterator[dict[str, Any] | None]:
    frame: list[str] = []
    for line in line_iter:
        if line == "":
            if frame:
                yield parse_frame(frame)
                frame = []
            continue
        frame.append(line)
    if frame:
        raise AssertionError(f"stream ended inside a frame: {frame}")


def parse_stream(raw: bytes) -> list[dict[str, Any]]:
    """All events of a complete SSE body; asserts it ends on a frame boundary."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    lines = text.split("\n")  # our frames use LF only; a stray CR would show up as a bad field
    return [e for e in iter_frames(iter(lines)) if e is not None]
