"""Reading our SSE streams strictly: every frame exactly `id:`, `event:`, `data:` and a blank line."""
from __future__ import annotations

import socket
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


def http_chunks(base_url: str, path: str, headers: dict[str, str], body: dict[str, Any] | None = None,
                until: bytes | None = None) -> list[bytes]:
    """POST `body` (GET without one) over a raw socket: the response body's HTTP/1.1 chunks
    as the server framed them, one per write of the response, up to the terminating one
    (or, with `until`, up to the first chunk that holds it)."""
    host, port = base_url.removeprefix("http://").split(":")
    payload = b"" if body is None else orjson.dumps(body)
    head = [f"{'GET' if body is None else 'POST'} {path} HTTP/1.1", f"Host: {host}:{port}",
            "Content-Type: application/json", f"Content-Length: {len(payload)}", "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + payload)
        received = b""
        while b"\r\n\r\n" not in received:
            part = raw.recv(65536)
            assert part, f"the connection closed before the response's head: {received!r}"
            received += part
        status, _, rest = received.partition(b"\r\n")
        assert b" 200 " in status, received[:500]
        response_head, _, rest = rest.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in response_head.lower(), response_head
        chunks: list[bytes] = []
        while True:
            size_line, crlf, after = rest.partition(b"\r\n")
            if crlf and len(after) >= int(size_line, 16) + 2:
                size = int(size_line, 16)
                if size == 0:
                    return chunks
                chunks.append(after[:size])
                assert after[size:size + 2] == b"\r\n"
                rest = after[size + 2:]
                if until is not None and until in chunks[-1]:
                    return chunks
                continue
            more = raw.recv(65536)
            assert more, f"the response ended inside a chunk: {rest[:200]!r}"
            rest += more
