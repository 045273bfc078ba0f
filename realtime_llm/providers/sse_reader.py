"""Reading an upstream's Server-Sent Events stream, as the SSE specification defines it."""
from __future__ import annotations

import re
from typing import AsyncIterator

# SSE lines end in CRLF, LF or CR, and nothing else: str.splitlines (and so httpx's
# aiter_lines) would also split on U+2028, U+0085 and friends, which JSON text may hold raw.
END_OF_LINE = re.compile(r"\r\n|\r|\n")


async def sse_lines(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    buffer = ""
    async for chunk in chunks:
        buffer += chunk
        start = 0
        for match in END_OF_LINE.finditer(buffer):
            if match.group() == "\r" and match.end() == len(buffer):
                break  # maybe the first half of a CRLF split across chunks
            yield buffer[start:match.start()]
            start = match.end()
        buffer = buffer[start:]
    if buffer:
        yield buffer.rstrip("\r")


async def sse_data(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data` of each event: multi-line data joined by newlines; comments, `event:`,
    `id:` and `retry:` fields skipped; an event without data dispatches nothing."""
    data: list[str] = []
    async for line in sse_lines(chunks):
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
    if data:  # a stream that ends without the final blank line still delivers its last event
        yield "\n".join(data)
