"""The text of a PDF, read by pypdf in a process of its own (uploads.py starts it): a PDF
made to take minutes or gigabytes is ended by the operating system's limits and a kill
at the deadline, never by a thread the server cannot stop.

    python -m realtime_llm.pdftext MAX_CHARS MAX_PAGES MAX_MEMORY_BYTES MAX_CPU_SECONDS < file.pdf > text

Exit status 0 with the text; anything else means the PDF could not be read.
"""
from __future__ import annotations

import io
import resource
import sys


def extract(data: bytes, max_chars: int, max_pages: int) -> str:
    from pypdf import PdfReader

    pages: list[str] = []
    size = 0
    for number, page in enumerate(PdfReader(io.BytesIO(data)).pages):
        if number >= max_pages:
            break
        text = page.extract_text() or ""
        pages.append(text)
        size += len(text)
        if size >= max_chars:
            break
    return "\n\n".join(pages)[:max_chars]


def main() -> None:
    max_chars, max_pages, memory, cpu = map(int, sys.argv[1:5])
    # Bounded before the PDF is read (set here, not by the server: a preexec hook is unsafe
    # in a process with threads).
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    text = extract(sys.stdin.buffer.read(), max_chars, max_pages)
    sys.stdout.buffer.write(text.encode("utf-8", "replace"))


if __name__ == "__main__":
    main()
