"""Attachments on the page in a real browser: attach a real PNG and a text file, see the
thumbnail (decoded by the browser) and the demo model's description, download the file."""
# ruff: noqa: F811  (test_page's fixtures are imported, and test arguments share their names)
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.filesamples import png
from tests.test_page import SHOTS, browser, create, page, page_server, send, sign_up, tid  # noqa: F401


def test_attach_a_png_and_a_text_file(page: Page, tmp_path: Path) -> None:
    image = tmp_path / "tiny.png"
    image.write_bytes(png(3, 2))
    notes = tmp_path / "notes.txt"
    notes.write_text("first line\nsecond line\n")
    sign_up(page)
    create(page, "Attachments", model="demo")
    tid(page, "attach").set_input_files([str(image), str(notes)])
    expect(tid(page, "pending-attachment")).to_have_count(2)
    send(page, "What are these?")
    expect(tid(page, "pending-attachment")).to_have_count(0)
    expect(tid(page, "message-user")).to_have_text("What are these?")  # the bubble holds the text alone
    shown = tid(page, "attachment")
    expect(shown).to_have_count(2)
    thumbnail = shown.first.locator("img")
    expect(thumbnail).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function("img => img.complete && img.naturalWidth === 3 && img.naturalHeight === 2",
                           arg=thumbnail.element_handle())  # a real PNG, decoded by the browser
    expect(shown.nth(1)).to_have_text("notes.txt")
    answer = tid(page, "message-assistant").last
    expect(answer).to_contain_text("tiny.png (image/png, ")
    expect(answer).to_contain_text("3×2 pixels")
    expect(answer).to_contain_text("notes.txt (text/plain, 23 bytes")
    page.screenshot(path=str(SHOTS / "30-attachments.png"))

    with page.expect_download() as download:
        shown.nth(1).click()
    saved = tmp_path / "downloaded.txt"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "notes.txt"
    assert saved.read_text() == "first line\nsecond line\n"

    page.reload()  # from history: the same
    expect(tid(page, "attachment")).to_have_count(2)
    page.wait_for_function("img => img.complete && img.naturalWidth === 3",
                           arg=tid(page, "attachment").first.locator("img").element_handle())


def test_a_refused_file_is_said_in_words(page: Page, tmp_path: Path) -> None:
    program = tmp_path / "setup.png"
    program.write_bytes(b"MZ\x90\x00\x03\x00\x00\x00" + bytes(range(256)))
    sign_up(page)
    create(page, "Refused", model="demo")
    tid(page, "attach").set_input_files(str(program))
    expect(tid(page, "error").last).to_contain_text("setup.png: only images (PNG, JPEG, WebP, GIF), PDF")
    expect(tid(page, "pending-attachment")).to_have_count(0)

