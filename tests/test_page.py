"""The bundled chat page in a real browser (Debian's Chromium driven by Playwright) against
the real server and the fake upstream. Screenshots go to test-artifacts/screenshots/."""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import PASSWORD, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page_server(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("page")
    config: dict[str, Any] = base_config(workdir, "sqlite", upstream)
    for provider in config["llm"]["providers"]:  # concrete names, so the page can offer them
        if provider["name"] in ("fake", "dead"):
            provider["models"] = [f"{provider['name']}-model", *provider["models"]]
    config["llm"]["providers"][0]["delay_ms"] = 30
    config["llm"]["auto_titles"] = True  # every other test names its conversation
    server = ServerProcess(write_config(workdir / "config.yaml", config), workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"Chromium is not at {CHROMIUM}: apt-get install chromium (or set CHROMIUM)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Browser, page_server: ServerProcess) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    tab = context.new_page()
    tab.goto(page_server.url + "/")
    yield tab
    context.close()


def tid(page: Page, name: str):  # noqa: ANN201
    return page.get_by_test_id(name)


def sign_up(page: Page, username: str | None = None) -> str:
    username = username or f"page_{uuid.uuid4().hex[:8]}"
    tid(page, "username").fill(username)
    tid(page, "password").fill(PASSWORD)
    tid(page, "register").click()
    expect(page.locator("#app")).to_be_visible()
    return username


def log_in(page: Page, username: str) -> None:
    tid(page, "username").fill(username)
    tid(page, "password").fill(PASSWORD)
    tid(page, "login").click()
    expect(page.locator("#app")).to_be_visible()


def create(page: Page, title: str, model: str = "fake-model") -> None:
    tid(page, "new-conversation").click()
    tid(page, "conversation-title").fill(title)
    tid(page, "model-select").select_option(model)
    tid(page, "create-conversation").click()
    expect(page.locator("#chat-title")).to_have_text(title or re.compile(r"^Conversation \d+$"))
    expect(tid(page, "message-input")).to_be_enabled()


def send(page: Page, text: str) -> None:
    tid(page, "message-input").fill(text)
    tid(page, "message-input").press("Enter")


def answer(count: int) -> str:
    return "".join(f"t{i} " for i in range(count))


def test_register_create_and_stream(page: Page) -> None:
    """Register, create, chat: the answer is visible while it streams, then complete."""
    page.screenshot(path=str(SHOTS / "01-login.png"))
    sign_up(page)
    create(page, "Streaming")
    send(page, "#fake tokens=40 delay_ms=50")
    expect(tid(page, "message-user")).to_have_text("#fake tokens=40 delay_ms=50")
    bubble = tid(page, "message-assistant").last
    expect(bubble).to_have_text(re.compile(r"^t0 t1 "))
    partial = bubble.text_content() or ""
    assert "t39" not in partial, "the answer should be visible before it ends"
    expect(tid(page, "stop")).to_be_enabled()
    page.screenshot(path=str(SHOTS / "02-streaming.png"))
    expect(bubble).to_have_text(answer(40), timeout=15000)
    expect(tid(page, "send")).to_be_enabled()
    page.screenshot(path=str(SHOTS / "03-answered.png"))


def test_shift_enter_is_a_newline(page: Page) -> None:
    sign_up(page)
    create(page, "Keys")
    box = tid(page, "message-input")
    box.fill("#fake tokens=1")
    box.press("Shift+Enter")
    box.type("second line")
    expect(box).to_have_value("#fake tokens=1\nsecond line")
    assert tid(page, "message-user").count() == 0
    box.press("Enter")
    expect(tid(page, "message-user")).to_have_text("#fake tokens=1\nsecond line")


@pytest.mark.parametrize("how", ["button", "Escape"])
def test_stop_keeps_the_partial_answer(page: Page, how: str) -> None:
    sign_up(page)
    create(page, "Stopping")
    send(page, "#fake tokens=200 delay_ms=50")
    bubble = tid(page, "message-assistant").last
    expect(bubble).to_have_text(re.compile(r"^t0 t1 t2 "))
    if how == "button":
        tid(page, "stop").click()
    else:
        page.keyboard.press("Escape")  # the keyboard's Stop (focus is still in the composer)
    expect(tid(page, "send")).to_be_enabled()
    expect(tid(page, "stop")).to_be_disabled()
    partial = bubble.text_content() or ""
    assert partial and "t199" not in partial
    page.reload()
    expect(tid(page, "message-assistant").last).to_have_text(partial)


def test_reload_mid_answer_continues(page: Page) -> None:
    """A reload mid-generation shows the answer so far and keeps streaming to the end."""
    sign_up(page)
    create(page, "Reloading")
    send(page, "#fake tokens=60 delay_ms=50")
    expect(tid(page, "message-assistant").last).to_have_text(re.compile(r"t3 "))
    page.reload()
    bubble = tid(page, "message-assistant").last
    expect(bubble).to_have_text(re.compile(r"^t0 t1 t2 t3 "))
    expect(bubble).to_have_text(answer(60), timeout=15000)
    expect(tid(page, "message-user")).to_have_count(1)
    page.screenshot(path=str(SHOTS / "04-after-reload.png"))


def test_server_restart_mid_answer(browser: Browser, upstream: FakeUpstream, tmp_path: Path) -> None:
    """The server restarts mid-answer: the page reconnects by itself and shows the saved
    answer, and chatting goes on."""
    settings = base_config(tmp_path, "sqlite", upstream)
    settings["llm"]["providers"][0]["delay_ms"] = 100  # the demo answer takes about 4 s
    config = write_config(tmp_path / "config.yaml", settings)
    server = ServerProcess(config, tmp_path).start()
    context = browser.new_context()
    tab = context.new_page()
    try:
        tab.goto(server.url + "/")
        sign_up(tab)
        create(tab, "Restart", model="demo")
        send(tab, "tell me something long")
        expect(tid(tab, "message-assistant").last).to_have_text(re.compile(r"You said"))
        server.stop()
        server = ServerProcess(config, tmp_path, port=server.port).start()
        expect(tid(tab, "message-input")).to_be_enabled(timeout=15000)
        expect(tid(tab, "send")).to_be_enabled(timeout=15000)
        saved = tid(tab, "message-assistant").last.text_content() or ""
        assert saved.startswith("You said") and not saved.endswith("conversation.")  # the partial answer
        tab.reload()
        expect(tid(tab, "message-assistant").last).to_have_text(saved)  # exactly what was saved
        send(tab, "and again")
        expect(tid(tab, "message-user")).to_have_count(2)
        expect(tid(tab, "message-assistant").last).to_have_text(re.compile(r"turn 2 of our conversation\.$"), timeout=15000)
    finally:
        context.close()
        server.stop()


def test_two_tabs_stay_in_sync(browser: Browser, page: Page, page_server: ServerProcess) -> None:
    username = sign_up(page)
    create(page, "Shared")
    other_context = browser.new_context()
    other = other_context.new_page()
    try:
        other.goto(page_server.url + "/")
        log_in(other, username)
        tid(other, "conversation-item").filter(has_text="Shared").click()
        expect(tid(other, "message-input")).to_be_enabled()
        send(page, "#fake tokens=20 delay_ms=30")
        expect(tid(other, "message-user")).to_have_text("#fake tokens=20 delay_ms=30")
        expect(tid(other, "message-assistant").last).to_have_text(answer(20), timeout=15000)
        expect(tid(page, "message-assistant").last).to_have_text(answer(20))
        other.screenshot(path=str(SHOTS / "05-second-tab.png"))
    finally:
        other_context.close()


HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b>bold?</b>'


def test_hostile_answer_is_shown_as_text(page: Page) -> None:
    """Markup in a model's answer renders as text and never runs."""
    sign_up(page)
    create(page, "Hostile")
    send(page, "#fake echo=1\n" + HOSTILE)
    bubble = tid(page, "message-assistant").last
    expect(bubble).to_have_text(HOSTILE, timeout=15000)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#messages img, #messages script, #messages b").count() == 0
    page.reload()
    expect(tid(page, "message-assistant").last).to_have_text(HOSTILE)
    assert page.evaluate("window.__pwned") is None
    page.screenshot(path=str(SHOTS / "06-hostile-as-text.png"))


def test_errors_are_shown_in_words(page: Page) -> None:
    sign_up(page)
    create(page, "Unreachable", model="dead-model")
    send(page, "hello?")
    expect(tid(page, "error").last).to_contain_text("could not reach")
    page.screenshot(path=str(SHOTS / "07-error.png"))


def test_delete_and_logout(page: Page) -> None:
    sign_up(page)
    create(page, "Doomed")
    create(page, "Kept")
    expect(tid(page, "conversation-item")).to_have_count(2)
    tid(page, "conversation-item").filter(has_text="Doomed").get_by_test_id("delete-conversation").click()
    expect(tid(page, "conversation-item")).to_have_count(1)
    expect(tid(page, "conversation-item")).to_have_text(re.compile("Kept"))
    tid(page, "logout").click()
    expect(tid(page, "login")).to_be_visible()


def test_phone_width(browser: Browser, page_server: ServerProcess) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740})
    phone = context.new_page()
    try:
        phone.goto(page_server.url + "/")
        sign_up(phone)
        phone.locator("#show-sidebar").click()
        create(phone, "Small screen")
        send(phone, "#fake tokens=5")
        expect(tid(phone, "message-assistant").last).to_have_text(answer(5))
        box = tid(phone, "message-input").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
        phone.screenshot(path=str(SHOTS / "08-phone.png"))
    finally:
        context.close()


def test_page_security_headers(page_server: ServerProcess) -> None:
    import httpx

    response = httpx.get(page_server.url + "/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "connect-src 'self';" in csp  # sockets and requests to this host only
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-dns-prefetch-control"] == "off"  # no lookup of an answer's link hosts


def test_title_and_an_edit_made_elsewhere_show_up(page: Page, page_server: ServerProcess) -> None:
    """An untitled conversation gets its title live; an edit sent by another client (the
    API here) replaces the turns on the page: no mix of old and new."""
    username = sign_up(page)
    create(page, "")
    send(page, "#fake tokens=3\nfirst question")
    expect(tid(page, "message-assistant").last).to_have_text(answer(3))
    expect(page.locator("#chat-title")).to_have_text("t0 t1 t2 t3 t4")  # the fake model's title
    expect(tid(page, "conversation-item").first).to_contain_text("t0 t1 t2 t3 t4")
    with httpx.Client(base_url=page_server.url, timeout=30) as http:
        token = http.post("/api/users/login", json={"username": username, "password": PASSWORD}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        cid = http.get("/api/conversations/list", headers=headers).json()[0]["conversation_id"]
        first = http.get(f"/api/conversations/history/{cid}", headers=headers).json()["messages"][0]["message_id"]
        edited = http.post(f"/api/chat/{cid}", headers=headers,
                           json={"message": "#fake tokens=2\nedited question", "edit_message_id": first})
        assert edited.status_code == 200
    expect(tid(page, "message-user")).to_have_count(1)
    expect(tid(page, "message-user")).to_have_text("#fake tokens=2\nedited question")
    expect(tid(page, "message-assistant")).to_have_count(1)
    expect(tid(page, "message-assistant")).to_have_text(answer(2))
    page.reload()  # and the same after reading it all again
    expect(tid(page, "message-user")).to_have_count(1)
    expect(tid(page, "message-assistant")).to_have_text(answer(2))


def test_thinking_streams_in_its_own_block_collapses_and_survives_a_reload(page: Page,
                                                                          upstream: FakeUpstream) -> None:
    """A reasoning model's thinking shows live in a "Thinking" block above the answer,
    folds away when the answer starts, and is there again after a reload; the answer's
    bubble holds the answer alone. The conversation's settings go upstream."""
    sign_up(page)
    create(page, "Thinking")
    send(page, "#fake think=25 delay_ms=60 tokens=5")
    block = tid(page, "reasoning").last
    expect(block).to_contain_text("r2 ")
    expect(block.locator("details")).to_have_js_property("open", True)  # open while the model thinks
    page.screenshot(path=str(SHOTS / "20-thinking.png"))
    expect(tid(page, "message-assistant").last).to_have_text(answer(5), timeout=15000)
    expect(block.locator("details")).to_have_js_property("open", False)  # folded once it answers
    expect(block.locator(".thought")).to_have_text("".join(f"r{i} " for i in range(25)))
    page.reload()
    block = tid(page, "reasoning").last
    expect(block.locator(".thought")).to_have_text("".join(f"r{i} " for i in range(25)))
    expect(tid(page, "message-assistant").last).to_have_text(answer(5))
    block.locator("summary").click()
    page.screenshot(path=str(SHOTS / "21-thinking-after-reload.png"))

    tid(page, "show-params").click()
    tid(page, "param-temperature").fill("0.3")
    tid(page, "param-reasoning_effort").select_option("high")
    tid(page, "save-params").click()
    expect(tid(page, "params-form")).to_be_hidden()
    send(page, "#fake tokens=2\nwith settings")
    expect(tid(page, "message-assistant").last).to_have_text(answer(2))
    body = upstream.request_for("#fake tokens=2\nwith settings").body
    assert body["temperature"] == 0.3 and body["reasoning_effort"] == "high" and "top_p" not in body
