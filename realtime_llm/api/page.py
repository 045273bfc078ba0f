"""The bundled chat page at / (files in static/, no build step)."""
from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from realtime_llm.api.docs import documented

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"

# Scripts only from this origin (none inline), sockets to this host, and no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-DNS-Prefetch-Control": "off",  # a link's host in an answer is not looked up before a click
}


@documented({"summary": "The chat page", "responses": {"200": {"description": "HTML",
            "content": {"text/html": {"schema": {"type": "string"}}}}}})
async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)
