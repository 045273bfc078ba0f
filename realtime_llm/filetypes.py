"""What an uploaded file is, from its bytes (DESIGN.md, Attachments): never from what the
client says. Images (PNG, JPEG, WebP, GIF), PDF, and UTF-8 text; anything else is refused."""
from __future__ import annotations

import struct
from dataclasses import dataclass

TEXT_TYPES = {".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv", ".json": "application/json"}


@dataclass(frozen=True)
class Sniffed:
    content_type: str
    kind: str  # "image", "pdf" or "text"
    width: int | None = None  # images: their size in pixels, where the header says
    height: int | None = None


def sniff(data: bytes, name: str) -> Sniffed | None:
    """The file's type from its first bytes (text: from its name's extension once the
    bytes are known to be UTF-8); None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        width, height = struct.unpack(">II", data[16:24]) if len(data) >= 24 else (None, None)
        return Sniffed("image/png", "image", width, height)
    if data.startswith(b"\xff\xd8\xff"):
        return Sniffed("image/jpeg", "image", *_jpeg_size(data))
    if data[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", data[6:10]) if len(data) >= 10 else (None, None)
        return Sniffed("image/gif", "image", width, height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return Sniffed("image/webp", "image", *_webp_size(data))
    if data.startswith(b"%PDF-"):
        return Sniffed("application/pdf", "pdf")
    if b"\x00" in data:  # UTF-8 text has no NUL; binary formats nearly always do
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    extension = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return Sniffed(TEXT_TYPES.get(extension, "text/plain"), "text")


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    """From the first start-of-frame marker."""
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None, None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + length
    return None, None


def _webp_size(data: bytes) -> tuple[int | None, int | None]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None, None
