"""An uploaded file, read off the request within its bounds (DESIGN.md, Attachments): the
multipart body is parsed as it streams in (python-multipart, through Starlette's parser,
which spools a file past 1 MiB to disk) and refused with a 413 the moment it passes the
limit, without the rest being read. What it is comes from its bytes (filetypes.py); it is
then read off the spool a chunk at a time, never whole."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import AsyncGenerator, AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from realtime_llm.config import ServerSettings
from realtime_llm.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from realtime_llm.filetypes import HEAD_BYTES, Sniffed, Utf8Text, sniff

logger = logging.getLogger("realtime_llm.uploads")

MULTIPART_OVERHEAD = 16_384  # boundaries and part headers around the file
MAX_NAME_CHARS = 255
PDF_SECONDS = 30.0  # reading a PDF's text may take this long; past it the file is refused
PDF_MAX_PAGES = 2_000  # pages read for text; the rest of a longer PDF is not
PDF_MEMORY_BYTES = 1 << 30  # the PDF reader's process may map this much
PDFS_AT_ONCE = 2  # PDF readers a server process runs at a time (the machine's cores, not more)
_pdf_slots = asyncio.Semaphore(PDFS_AT_ONCE)


CHUNK_BYTES = 262_144  # how a file is read off its spool and kept: file_chunks rows of this size


@dataclass(frozen=True)
class Upload:
    """A received file, spooled (on disk past 1 MiB): its bytes are read a chunk at a time."""

    name: str
    size: int
    kind: Sniffed
    text: str  # a PDF's text; "" for anything else (a text file's text is its bytes)
    text_chars: int  # what a model reads of it: a text file's or a PDF's characters
    file: UploadFile

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        await self.file.seek(0)
        while chunk := await self.file.read(CHUNK_BYTES):
            yield chunk


@contextlib.asynccontextmanager
async def received_file(request: Request, server: ServerSettings, max_bytes: int) -> AsyncIterator[Upload]:
    """The file in the form's `file` field, checked and typed; its spool is removed on leaving."""
    async with received_spool(request, server, max_bytes) as file:
        yield await _checked(file, max_bytes)


@contextlib.asynccontextmanager
async def received_spool(request: Request, server: ServerSettings, max_bytes: int) -> AsyncIterator[UploadFile]:
    """The form's `file` field as it came, spooled (on disk past 1 MiB), at most `max_bytes`."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("send the file as multipart/form-data, in a field named 'file'")
    bound = max_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("invalid Content-Length header")
        if int(declared) > bound:
            raise PayloadTooLarge(f"a file may be at most {max_bytes} bytes")  # refused before a byte is read

    async def bounded() -> AsyncGenerator[bytes, None]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > bound:
                raise PayloadTooLarge(f"a file may be at most {max_bytes} bytes")
            yield chunk

    parser = MultiPartParser(request.headers, bounded(), max_files=1, max_fields=8, max_part_size=4096)
    try:
        # As long as a body of this size may take at the slowest rate the server allows
        # (server.body_timeout_seconds per max_body_bytes), and never less than that timeout.
        async with asyncio.timeout(server.body_timeout_seconds * max(1.0, bound / server.max_body_bytes)):
            form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
    except TimeoutError:
        raise RequestTimeout("the file did not arrive in time") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise BadRequest("the form needs the file in a field named 'file'")
        if (file.size or 0) > max_bytes:
            raise PayloadTooLarge(f"a file may be at most {max_bytes} bytes")
        yield file
    finally:
        await form.close()


async def _checked(file: UploadFile, max_bytes: int) -> Upload:
    name = clean_name(file.filename or "")
    size = file.size if file.size is not None else 0  # at most max_bytes: received_spool saw to it
    await file.seek(0)
    kind = sniff(await file.read(HEAD_BYTES), name)
    if kind is None:
        raise UnsupportedMediaType("only images (PNG, JPEG, WebP, GIF), PDF and UTF-8 text files are taken")
    upload = Upload(name, size, kind, "", 0, file)
    if kind.kind == "pdf":
        pdf = await pdf_text(file, max_chars=max_bytes)
        return dataclasses.replace(upload, text=pdf, text_chars=len(pdf))
    if kind.kind == "text":
        counted = Utf8Text()  # the whole of it, read a chunk at a time
        async for chunk in upload.chunks():
            counted.feed(chunk)
        counted.feed(b"", final=True)
        chars = counted.chars
        if chars is None:
            raise UnsupportedMediaType("a text file must be UTF-8 throughout")
        return dataclasses.replace(upload, text_chars=chars)
    return upload


def clean_name(raw: str) -> str:
    """The file's own name (no directories), without control characters, at most 255 characters."""
    name = re.split(r"[\\/]", raw)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return name[:MAX_NAME_CHARS] or "file"


async def pdf_text(file: UploadFile, max_chars: int) -> str:
    """A PDF's text, read in a process of its own (pdftext.py) with bounded memory and CPU,
    killed at PDF_SECONDS; at most PDFS_AT_ONCE at a time in this process. A PDF it cannot
    read in time is refused."""
    async with _pdf_slots:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "realtime_llm.pdftext", str(max_chars), str(PDF_MAX_PAGES), str(PDF_MEMORY_BYTES),
            str(int(PDF_SECONDS) + 1), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        assert process.stdin is not None and process.stdout is not None
        try:
            async with asyncio.timeout(PDF_SECONDS):
                await file.seek(0)
                while chunk := await file.read(CHUNK_BYTES):
                    process.stdin.write(chunk)
                    await process.stdin.drain()
                process.stdin.close()
                text = await process.stdout.read(4 * max_chars + 4)  # UTF-8: at most 4 bytes a character
                status = await process.wait()
        except TimeoutError:
            raise UnsupportedMediaType("this PDF takes too long to read") from None
        except (BrokenPipeError, ConnectionResetError):
            status = await process.wait()  # it stopped reading: ended by a limit
            text = b""
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    if status != 0:
        logger.info("unreadable PDF (pdftext exited with %s)", status)
        raise UnsupportedMediaType("this PDF cannot be read")
    return text.decode("utf-8", "replace")[:max_chars]
