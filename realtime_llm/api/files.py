"""/api/files: upload a file to attach to messages, download one's own (DESIGN.md,
Attachments); and the `attachments` of a chat message, checked."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import StreamingResponse

from realtime_llm.api.access import require_caller, services_of
from realtime_llm.api.docs import ERROR_RESPONSE, SECURED, documented, json_response, ref
from realtime_llm.errors import BadRequest, NotFound, PayloadTooLarge
from realtime_llm.responses import JSONResponse
from realtime_llm.services import Services
from realtime_llm.store.files import StoredFile
from realtime_llm.store.messages import PROMPT_IMAGE_BYTES
from realtime_llm.uploads import received_file

FILE_ID = re.compile(r"file_[A-Za-z0-9_-]{1,35}")
FILE_ID_SCHEMA = {"type": "string", "pattern": f"^{FILE_ID.pattern}$", "maxLength": 40}
BINARY = {"type": "string", "format": "binary"}
SERVED_AS = ("image/png", "image/jpeg", "image/webp", "image/gif", "application/pdf", "text/plain")
# What a downloaded file may never do in a browser: run, be sniffed as HTML, be framed.
DOWNLOAD_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
                    "Cache-Control": "private, no-store"}


@documented({
    "summary": "Upload a file (an image, a PDF or a text file) to attach to messages",
    "security": SECURED,
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {"file": BINARY}}}}},
    "responses": {"201": json_response(ref("File"), "stored"), **{code: ERROR_RESPONSE for code in (
        "400", "401", "408", "413", "415", "429", "503")}},
})
async def upload(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    services = services_of(request)
    limits = services.settings.limits
    await services.limiter.check("uploads", f"uploads:{caller.user.id}", limits.uploads_per_minute_per_user, 60)
    async with received_file(request, services.settings.server, limits.max_file_bytes) as file:
        stored = await services.conversations.files.create(
            caller.user.id, name=file.name, content_type=file.kind.content_type, size=file.size,
            width=file.kind.width, height=file.kind.height, text=file.text, text_chars=file.text_chars,
            chunks=file.chunks(), max_bytes_per_user=limits.max_bytes_per_user)
    return JSONResponse(stored, status_code=201)


@documented({
    "summary": "A file of the caller's, as a download",
    "security": SECURED,
    "parameters": [{"name": "file_id", "in": "path", "required": True, "schema": FILE_ID_SCHEMA}],
    "responses": {"200": {"description": "the bytes", "content": {media: {"schema": BINARY} for media in SERVED_AS}},
                  "401": ERROR_RESPONSE, "404": ERROR_RESPONSE, "503": ERROR_RESPONSE},
})
async def download(request: Request) -> StreamingResponse:
    """To its owner only; anyone else's, or none, is a 404. Text goes out as text/plain."""
    caller = await require_caller(request)
    file_id = request.path_params["file_id"]
    files = services_of(request).conversations.files
    stored = await files.find(file_id, caller.user.id) if FILE_ID.fullmatch(file_id) else None
    if stored is None:
        raise NotFound("file not found")
    media = stored.content_type if stored.is_image or stored.content_type == "application/pdf" \
        else "text/plain; charset=utf-8"
    fallback = stored.name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(stored.name, safe='')}"
    headers = {**DOWNLOAD_HEADERS, "Content-Disposition": disposition, "Content-Length": str(stored.size)}
    return StreamingResponse(files.chunks(stored.file_id), media_type=media, headers=headers)


async def attachments_in(services: Services, value: Any, user_id: int) -> list[StoredFile] | None:
    """A chat message's `attachments`: ids of files of the caller's (None when absent)."""
    if value is None:
        return None
    most = services.settings.limits.attachments_per_message
    if not isinstance(value, list) or not all(isinstance(v, str) and FILE_ID.fullmatch(v) for v in value):
        raise BadRequest("'attachments' must be a list of file ids (from POST /api/files)")
    if len(value) > most:
        raise BadRequest(f"a message may carry at most {most} attachments")
    if len(set(value)) != len(value):
        raise BadRequest("'attachments' names a file twice")
    files = await services.conversations.files.owned(value, user_id)
    if sum(f.size for f in files if f.is_image) > PROMPT_IMAGE_BYTES:
        raise PayloadTooLarge(f"the images of one message may take at most {PROMPT_IMAGE_BYTES // 2**20} MiB")
    return files
