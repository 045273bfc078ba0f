"""A ChatGPT export read in a process of its own (chatgpt_reader.py, with chatgpt.py): one
that would take gigabytes or minutes is ended by the operating system's limits, and its
objects never weigh on the server's event loop or its garbage collector. The process
checks the whole export before it hands back a conversation: a malformed one yields none.
At most READERS_AT_ONCE of them at a time in this process."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import AsyncGenerator

import anyio.to_thread
import orjson
from starlette.datastructures import UploadFile

from realtime_llm.errors import BadRequest, PayloadTooLarge, ServiceUnavailable
from realtime_llm.importers.chatgpt import Reading
from realtime_llm.importers.chatgpt_reader import CHUNK_BYTES, LENGTH_BYTES, MALFORMED, TOO_LARGE
from realtime_llm.importers.records import ImportedConversation, ImportedMessage

logger = logging.getLogger("realtime_llm.imports")

MEMORY_BYTES = 1 << 30  # the reading process may map this much
CPU_SECONDS = 120  # ... and use this much CPU: reading 50 MiB twice takes about 10 s here
READERS_AT_ONCE = 2  # reading processes a server process runs at a time (the machine's cores)
RECORD_BYTES = 64 * 1024 * 1024  # one conversation's record, at most (chatgpt.MAX_CONVERSATION_BYTES, escaped)
_readers = asyncio.Semaphore(READERS_AT_ONCE)


async def read_export(file: UploadFile, reading: Reading) -> AsyncGenerator[ImportedConversation, None]:
    """The conversations of the export in `file`, once all are checked."""
    async with _readers:
        arguments = orjson.dumps([reading.model, reading.max_title_chars, reading.max_unzipped_bytes,
                                  reading.max_conversations, MEMORY_BYTES, CPU_SECONDS]).decode()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "realtime_llm.importers.chatgpt_reader", arguments, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # records wait in the pipe, not here
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        try:
            try:
                await file.seek(0)
                while chunk := await file.read(CHUNK_BYTES):
                    process.stdin.write(chunk)
                    await process.stdin.drain()
                process.stdin.close()
                while True:  # until the end of its output (IncompleteReadError; its status says how it ended)
                    size = int.from_bytes(await process.stdout.readexactly(LENGTH_BYTES), "big")
                    if size > RECORD_BYTES:
                        raise PayloadTooLarge("a conversation of this export is too large to import")
                    yield await _conversation(await process.stdout.readexactly(size), reading.model)
            except (BrokenPipeError, ConnectionResetError, asyncio.IncompleteReadError):
                pass  # it stopped reading or writing: its status says why
            message = (await process.stderr.read(4096)).decode("utf-8", "replace").strip()
            status = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
            # wait() returns once the pipes are closed too (CPython gh-119710), and a reader
            # killed with output unread never closes them by itself: drained first.
            for stream in (process.stdout, process.stderr):
                while await stream.read(CHUNK_BYTES):
                    pass
            await process.wait()
    if status == MALFORMED:
        raise BadRequest(f"not a ChatGPT export: {message.splitlines()[-1] if message else 'unreadable'}")
    if status == TOO_LARGE:
        raise PayloadTooLarge(message.splitlines()[-1] if message else "this export is too large to import")
    if status in (-signal.SIGXCPU, -signal.SIGKILL):  # its CPU limit, or the kernel's OOM killer
        raise PayloadTooLarge("this export is too large or too complex to read")
    if status != 0:
        logger.warning("a ChatGPT export could not be read (status %s): %s", status, message[-1000:])
        raise ServiceUnavailable("the export could not be read here: try again") if status < 0 \
            else BadRequest("not a readable ChatGPT export")


async def _conversation(record: bytes, model: str) -> ImportedConversation:
    if len(record) > 1 << 20:  # a large one is decoded off the event loop
        title, created, leaf, rows = await anyio.to_thread.run_sync(orjson.loads, record)
    else:
        title, created, leaf, rows = orjson.loads(record)
    return ImportedConversation(title=title, created_time=created, active_leaf_id=leaf, model=model,
                                messages=[ImportedMessage(*row) for row in rows])
