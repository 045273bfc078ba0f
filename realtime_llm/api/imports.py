"""POST /api/import/chatgpt: a ChatGPT data export becomes conversations of the caller's
(DESIGN.md, Import)."""
from __future__ import annotations

import contextlib
import logging

from starlette.requests import Request

from realtime_llm.api.access import require_caller, services_of
from realtime_llm.api.docs import ERROR_RESPONSE, SECURED, documented
from realtime_llm.importers.chatgpt import Reading
from realtime_llm.importers.chatgpt_process import read_export
from realtime_llm.importers.writer import ImportWriter
from realtime_llm.responses import JSONResponse
from realtime_llm.store.cancelsafe import atomically
from realtime_llm.store.conversations import ConversationStore
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
    """All or nothing: the export is checked whole before a conversation is written
    (chatgpt_process.py); they are then written one transaction each (a long import does
    not hold SQLite's write lock from everyone else), and should a write fail, or the
    request be cancelled, those already written are deleted."""
    caller = await require_caller(request)
    services = services_of(request)
    limits = services.settings.limits
    await services.limiter.check("imports", f"imports:{caller.user.id}", limits.imports_per_hour_per_user, 3600)
    reading = Reading(services.settings.llm.default_model, limits.max_title_chars,
                      IMPORT_UNZIP_FACTOR * limits.max_import_bytes, limits.max_import_conversations)
    writer = ImportWriter(services.database, services.conversations.box)
    written: list[int] = []
    async with received_spool(request, services.settings.server, limits.max_import_bytes) as upload:
        try:
            async with contextlib.aclosing(read_export(upload, reading)) as conversations:
                async for conversation in conversations:
                    await writer.add_conversation(caller.user.id, conversation, written)
        except BaseException:
            await atomically(lambda: _delete(services.conversations, caller.user.id, written))
            raise
    return JSONResponse({"imported": len(written), "conversation_ids": written}, status_code=201)


async def _delete(conversations: ConversationStore, user_id: int, written: list[int]) -> None:
    for cid in written:
        try:
            await conversations.delete_owned(cid, user_id)
        except Exception:
            logger.exception("import: conversation %d of a failed import not deleted", cid)
