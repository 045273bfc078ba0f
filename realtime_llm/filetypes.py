"""What an uploaded file is, from its bytes (DESIGN.md, Attachments): never from what the
client says. Images (PNG, JPEG, WebP, GIF), PDF, and UTF-8 text; anything else is refused."""
from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass

TEXT_TYPES = {".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv", ".json": "application/json"}
HEAD_BYTES = 262_144  # what sniff() is given: enough for a JPEG's size after its metadata


@dataclass(frozen=True)
class Sniffed:
    content_type: str
    kind: str  # "image", "pdf" or "text"
    width: int | None = None  # images: their size in pixels, where the header says
    height: int | None = None


def sniff(head: bytes, name: str) -> Sniffed | None:
    """The file's type from its first HEAD_BYTES (text: from its name's extension once those
    bytes look like UTF-8 text; text_chars() checks the rest); None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        width, height = struct.unpack(">II", head[16:24]) if len(head) >= 24 else (None, None)
        return Sniffed("image/png", "image", width, height)
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image/jpeg", "image", *_jpeg_size(head))
    if head[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", head[6:10]) if len(head) >= 10 else (None, None)
        return Sniffed("image/gif", "image", width, height)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image/webp", "image", *_webp_size(head))
    if head.startswith(b"%PDF-"):
        return Sniffed("application/pdf", "pdf")
    head_text = Utf8Text()
    head_text.feed(head)  # (it may end inside a character)
    if head_text.chars is None:
        return None
    extension = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return Sniffed(TEXT_TYPES.get(extension, "text/plain"), "text")


class Utf8Text:
    """Counts the characters of UTF-8 text fed a chunk at a time; `chars` turns None at the
    first sign it is not text (not UTF-8, or a NUL, which text has not and binary formats
    nearly always have)."""

    def __init__(self) -> None:
        self.chars: int | None = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, chunk: bytes, final: bool = False) -> None:
        if self.chars is None:
            return
        try:
            self.chars = None if b"\x00" in chunk else self.chars + len(self._decoder.decode(chunk, final=final))
        except UnicodeDecodeError:
            self.chars = None


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
