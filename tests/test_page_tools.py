"""The page's tools in a real browser against the real server: rename in place, search as
you type (paged), export as JSON and Markdown, usage per answer and in total, copy, the
model picker, the keyboard (Ctrl+K; Enter and Escape are in test_page) and the light and
dark themes; the screenshots the README shows (desktop and phone width)."""
# ruff: noqa: F811  (test_page's fixtures are imported, and test arguments share their names)
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.conftest import PASSWORD
from tests.servers import ServerProcess
from tests.test_page import answer, browser, create, page, page_server, send, sign_up, tid  # noqa: F401

DOCS_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@contextmanager
def api_login(server: ServerProcess, username: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        token = http.post("/api/users/login", json={"username": username, "password": PASSWORD}).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        yield http


def test_rename_in_place(page: Page, page_server: ServerProcess) -> None:
    """A click on rename opens a focused field holding the title (no dialog); Enter saves,
    Escape cancels."""
    username = sign_up(page)
    create(page, "Old name")
    item = tid(page, "conversation-item").filter(has_text="Old name")
    item.get_by_test_id("rename").click()
    field = page.locator(":focus")
    expect(field).to_have_value("Old name")
    expect(field).to_have_attribute("data-testid", "rename-input")
    page.keyboard.type("New name")  # the whole title is selected: typing replaces it
    page.keyboard.press("Enter")
    expect(tid(page, "conversation-item")).to_have_text(re.compile("^New name"))
    with api_login(page_server, username) as http:
        assert [c["title"] for c in http.get("/api/conversations/list").json()] == ["New name"]
    expect(page.locator("#chat-title")).to_have_text("New name")  # the title event reached the open chat

    tid(page, "conversation-item").first.get_by_test_id("rename").click()
    page.keyboard.type("Not this")
    page.keyboard.press("Escape")
    expect(tid(page, "conversation-item")).to_have_text(re.compile("^New name"))
    expect(tid(page, "send")).to_be_enabled()  # Escape there stopped nothing, closed nothing


def test_search_as_you_type_and_paging(page: Page, page_server: ServerProcess) -> None:
    username = sign_up(page)
    with api_login(page_server, username) as http:
        for n in range(35):
            http.post("/api/conversations/create", json={"title": f"{'apple' if n % 2 else 'pear'} {n}"})
        chatted = http.post("/api/conversations/create", json={"title": "Untitled talk", "model": "fake-model"}).json()
        streamed = http.post(f"/api/chat/{chatted['conversation_id']}", json={"message": "#fake tokens=2\nbanana bread"})
        assert streamed.status_code == 200
    page.reload()
    expect(tid(page, "conversation-item")).to_have_count(30)  # one page
    tid(page, "more-conversations").click()
    expect(tid(page, "conversation-item")).to_have_count(36)
    expect(tid(page, "more-conversations")).to_be_hidden()

    tid(page, "search").press_sequentially("appl", delay=30)
    expect(tid(page, "conversation-item")).to_have_count(17)  # titles with "apple": 1, 3, ... 33
    tid(page, "search").fill("banana")  # message text matches too
    expect(tid(page, "conversation-item")).to_have_text(["Untitled talk✎✕"])
    tid(page, "conversation-item").click()
    expect(tid(page, "message-user")).to_have_text("#fake tokens=2\nbanana bread")
    tid(page, "search").fill("nothing like this")
    expect(tid(page, "conversation-item")).to_have_count(0)
    expect(page.locator("#no-conversations")).to_have_text("Nothing matches.")
    tid(page, "search").press("Escape")  # clears the search
    expect(tid(page, "conversation-item")).to_have_count(30)
    page.keyboard.press("Control+k")
    expect(tid(page, "search")).to_be_focused()


def test_export_usage_copy_and_model_picker(browser: Browser, page_server: ServerProcess) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 800},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    try:
        page.goto(page_server.url + "/")
        username = sign_up(page)
        expect(tid(page, "usage")).to_have_text("Tokens used: 0 in, 0 out")
        create(page, "Exported")
        send(page, "#fake echo=1 usage=11,22\nSome **bold** text.\n\n```sh\necho hi\n```")
        expect(tid(page, "message-assistant").last.locator("pre code")).to_have_text("echo hi")
        expect(tid(page, "answer-usage")).to_have_text("11 → 22 tokens")  # the upstream's own counts
        expect(tid(page, "usage")).to_have_text("Tokens used: 11 in, 22 out")
        with api_login(page_server, username) as http:
            cid = http.get("/api/conversations/list").json()[0]["conversation_id"]

        # Copy: a code block's code, and the whole answer as Markdown.
        tid(page, "message-assistant").last.locator("pre").get_by_test_id("copy").click()
        assert page.evaluate("navigator.clipboard.readText()") == "echo hi"
        page.locator("li.controls.for-assistant").get_by_test_id("copy").click()
        assert page.evaluate("navigator.clipboard.readText()") == "Some **bold** text.\n\n```sh\necho hi\n```"

        with page.expect_download() as exported:
            tid(page, "export-json").click()
        document = json.loads(Path(exported.value.path()).read_text())
        assert exported.value.suggested_filename == f"conversation-{cid}.json"
        assert document["title"] == "Exported" and [m["role"] for m in document["messages"]] == ["user", "assistant"]
        with page.expect_download() as exported:
            tid(page, "export-markdown").click()
        markdown = Path(exported.value.path()).read_text()
        assert exported.value.suggested_filename == f"conversation-{cid}.md"
        assert markdown.startswith("# Exported") and "Some **bold** text." in markdown

        # The model picker: the conversation's model changes, and the next answer uses it.
        expect(tid(page, "conversation-model")).to_have_value("fake-model")
        tid(page, "conversation-model").select_option("demo")
        with api_login(page_server, username) as http:
            for _ in range(50):
                if http.get(f"/api/conversations/history/{cid}").json()["model"] == "demo":
                    break
                page.wait_for_timeout(100)
            assert http.get(f"/api/conversations/history/{cid}").json()["model"] == "demo"
        send(page, "which model?")
        expect(tid(page, "message-assistant").last).to_contain_text("I am the demo model", timeout=15000)
        page.reload()
        expect(tid(page, "conversation-model")).to_have_value("demo")
    finally:
        context.close()


def test_a_refused_message_goes_back_into_the_composer(page: Page) -> None:
    """Too long (limits.max_message_chars): the error says so and the text is not lost."""
    sign_up(page)
    create(page, "Too long")
    text = "word " * 8000  # 40,000 characters
    tid(page, "message-input").fill(text)
    tid(page, "message-input").press("Enter")
    expect(tid(page, "error").last).to_have_text("That message is too long.")
    expect(tid(page, "message-input")).to_have_value(text)
    assert tid(page, "message-user").count() == 0


def test_theme_follows_the_system_until_chosen(browser: Browser, page_server: ServerProcess) -> None:
    context = browser.new_context(color_scheme="dark", viewport={"width": 1200, "height": 800})
    page = context.new_page()
    try:
        page.goto(page_server.url + "/")
        html = page.locator("html")
        expect(html).to_have_attribute("data-theme", "dark")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        sign_up(page)
        tid(page, "theme").click()
        expect(html).to_have_attribute("data-theme", "light")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != background
        page.reload()
        expect(html).to_have_attribute("data-theme", "light")  # the choice is kept
        tid(page, "theme").click()
        expect(html).to_have_attribute("data-theme", "dark")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == background
    finally:
        context.close()


SCREENSHOT_CHAT = """#fake echo=1 delay_ms=1
Here is a small **Python** function and how it behaves:

```python
def fizzbuzz(n: int) -> str:
    if n % 15 == 0:
        return "FizzBuzz"
    return "Fizz" if n % 3 == 0 else "Buzz" if n % 5 == 0 else str(n)
```

| n | result |
|---|--------|
| 3 | Fizz |
| 15 | FizzBuzz |

- answers stream token by token
- every version of an edited turn is kept"""


def test_screenshots_for_the_readme(browser: Browser, page_server: ServerProcess) -> None:
    """docs/screenshots/desktop.png and phone.png, as the README shows them."""
    DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
    for name, viewport in (("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
        context = browser.new_context(viewport=viewport, color_scheme="light")
        page = context.new_page()
        try:
            page.goto(page_server.url + "/")
            sign_up(page, "ada" if name == "desktop" else "ada_phone")  # a name, not a random one
            if name == "phone":
                page.locator("#show-sidebar").click()
            create(page, "A Markdown answer")
            send(page, SCREENSHOT_CHAT)
            expect(tid(page, "message-assistant").last.locator("table")).to_be_visible(timeout=15000)
            expect(tid(page, "answer-usage")).to_be_visible()
            page.screenshot(path=str(DOCS_SHOTS / f"{name}.png"))
        finally:
            context.close()
