"""Reading an upstream's Server-Sent Events stream, as the SSE specification defines it.

The parsing is plain code over each chunk (SSEParser), fed by the upstream client's body
callback (upstream_http.py) with no generator in between; `sse_data`, one async generator
around it, serves the benchmarks' clients. (Lines passed up through async generators of
their own, a line reader under the event reader, had cost about 8 % of the server's CPU
at 50 streams: py-spy, bench.relay_cpu.)"""
from __future__ import annotations

import re
from typing import AsyncIterator

# SSE lines end in CRLF, LF or CR, and nothing else: str.splitlines (and so httpx's
# aiter_lines) would also split on U+2028, U+0085 and friends, which JSON text may hold raw.
END_OF_LINE = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Text in as it arrives, the `data` of each complete event out: multi-line data joined
    by newlines; comments, `event:`, `id:` and `retry:` fields skipped; an event without
    data dispatches nothing."""

    def __init__(self) -> None:
        self._parts: list[str] = []  # an unfinished line, as it came (joined once it ends)
        self._data: list[str] = []  # the data lines of the event under way
        self._pending = 0  # characters of both

    def feed(self, chunk: str) -> list[str]:
        if "\n" not in chunk and "\r" not in chunk and not (self._parts and self._parts[-1].endswith("\r")):
            self._parts.append(chunk)  # a line still under way: kept, not copied again per chunk
            self._pending += len(chunk)
            return []
        buffer = "".join(self._parts) + chunk if self._parts else chunk
        self._pending -= sum(map(len, self._parts))
        if "\r" not in buffer:  # the usual case: LF only, no regular expression
            lines = buffer.split("\n")
            rest = lines.pop()
        else:
            lines, start = [], 0
            for match in END_OF_LINE.finditer(buffer):
                if match.group() == "\r" and match.end() == len(buffer):
                    break  # maybe the first half of a CRLF split across chunks
                lines.append(buffer[start:match.start()])
                start = match.end()
            rest = buffer[start:]
        self._parts = [rest] if rest else []
        self._pending += len(rest)
        events: list[str] = []
        for line in lines:
            self._line(line, events)
        return events

    def pending(self) -> int:
        """Characters held of the event under way: its data lines (each one more, for its
        line break) and an unfinished line."""
        return self._pending

    def end(self) -> list[str]:
        """The stream has ended: a last line without its end, and an event without the
        blank line that should have closed it, still count."""
        events: list[str] = []
        if self._parts:
            self._line("".join(self._parts).rstrip("\r"), events)
            self._parts = []
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        self._pending = 0
        return events

    def _line(self, line: str, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
                self._pending = sum(map(len, self._parts))
            return
        if line[0] == ":":
            return
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
            self._pending += len(self._data[-1]) + 1


async def sse_data(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data` of each event of a stream of text chunks (SSEParser)."""
    parser = SSEParser()
    async for chunk in chunks:
        for data in parser.feed(chunk):
            yield data
    for data in parser.end():
        yield data
