"""POST /api/import/chatgpt: a ChatGPT data export becomes conversations of the caller's
(DESIGN.md, Import)."""
from __future__ import annotations

import logging
from typing import IO, Awaitable, Callable

import anyio.to_thread
from starlette.requests import Request

from realtime_llm.api.access import require_caller, services_of
from realtime_llm.api.docs import ERROR_RESPONSE, SECURED, documented
from realtime_llm.errors import BadRequest, PayloadTooLarge
from realtime_llm.importers.chatgpt import ExportTooLarge, MalformedExport, Reading, conversations_in
from realtime_llm.importers.writer import ImportedConversation, ImportWriter
from realtime_llm.responses import JSONResponse
from realtime_llm.uploads import received_spool

logger = logging.getLogger("realtime_llm.imports")

IMPORT_UNZIP_FACTOR = 8  # a .zip's conversations.json may unpack to this many times the upload's bound


@documented({
    "summary": "Import a ChatGPT data export (conversations.json or the export's .zip) as conversations",
    "security": SECURED,
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}},
    "responses": {
        "201": {"description": "imported", "content": {"application/json": {"schema": {
            "type": "object", "required": ["imported", "conversation_ids"],
            "properties": {"imported": {"type": "integer"},
                           "conversation_ids": {"type": "array", "items": {"type": "integer"}}}}}}},
        **{code: ERROR_RESPONSE for code in ("400", "401", "408", "413", "415", "429", "503")}},
})
async def import_chatgpt(request: Request) -> JSONResponse:
    """All or nothing: the export is read through once to check every conversation, then
    again to write them, one transaction each (a long import does not hold SQLite's write
    lock from everyone else); should a write fail, those already written are deleted."""
    caller = await require_caller(request)
    services = services_of(request)
    limits = services.settings.limits
    await services.limiter.check("uploads", f"uploads:{caller.user.id}", limits.uploads_per_minute_per_user, 60)
    reading = Reading(services.settings.llm.default_model, limits.max_title_chars,
                      IMPORT_UNZIP_FACTOR * limits.max_import_bytes)
    writer = ImportWriter(services.database, services.conversations.box)
    ids: list[int] = []

    async def write(conversation: ImportedConversation) -> None:
        ids.extend(await writer.add_conversations(caller.user.id, [conversation]))

    async def check(conversation: ImportedConversation) -> None:
        pass

    async with received_spool(request, services.settings.server, limits.max_import_bytes) as upload:
        await _each(upload.file, reading, check)
        try:
            await _each(upload.file, reading, write)
        except BaseException:
            for cid in ids:
                try:
                    await services.conversations.delete_owned(cid, caller.user.id)
                except Exception:
                    logger.exception("import: conversation %d of a failed import not deleted", cid)
            raise
    return JSONResponse({"imported": len(ids), "conversation_ids": ids}, status_code=201)


async def _each(file: IO[bytes], reading: Reading, use: Callable[[ImportedConversation], Awaitable[None]]) -> None:
    """`use` each conversation of the export in turn, read and parsed on a worker thread."""
    conversations = conversations_in(file, reading)
    try:
        while (conversation := await anyio.to_thread.run_sync(next, conversations, None)) is not None:
            await use(conversation)
    except MalformedExport as exc:
        raise BadRequest(f"not a ChatGPT export: {exc}") from None
    except ExportTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    finally:
        conversations.close()
