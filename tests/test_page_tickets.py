"""Stream tickets and share links in a real browser: an EventSource, which sends no
headers, reads a live answer with a ticket in its URL (the page's own socket connects with
tickets too); a shared page streams an answer while its owner chats."""
# ruff: noqa: F811  (test_page's fixtures are imported, and test arguments share their names)
from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from tests.test_page import browser, create, page, page_server, send, sign_up  # noqa: F401


def test_an_event_source_reads_a_live_answer_with_a_ticket(page: Page) -> None:
    """A browser's EventSource sends no Authorization header: with a ticket in its URL it
    reads the conversation's events live, while the page itself chats."""
    sign_up(page)
    create(page, "Event source")
    cid = page.evaluate("Number(sessionStorage.getItem('conversation'))")
    page.evaluate("""async (cid) => {
        const token = sessionStorage.getItem("token");
        const response = await fetch("/api/tickets", {method: "POST", body: JSON.stringify({conversation_id: cid}),
            headers: {Authorization: `Bearer ${token}`, "Content-Type": "application/json"}});
        const {ticket} = await response.json();
        window.__seen = [];
        const source = new EventSource(`/api/chat/${cid}/events?ticket=${encodeURIComponent(ticket)}`);
        for (const type of ["user_message", "message", "full_response"]) {
            source.addEventListener(type, (event) => window.__seen.push(JSON.parse(event.data)));
        }
        await new Promise((resolve, reject) => { source.onopen = resolve; source.onerror = reject; });
        window.__source = source;
    }""", cid)
    send(page, "#fake tokens=4 delay_ms=20")
    page.wait_for_function("() => window.__seen.some((e) => e.event === 'full_response')")
    seen = page.evaluate("window.__seen")
    assert [e["event"] for e in seen][0] == "user_message"
    assert "".join(e["data"] for e in seen if e["event"] == "message") == "t0 t1 t2 t3 "
    assert seen[-1]["data"] == "t0 t1 t2 t3 "
    page.evaluate("window.__source.close()")


def test_a_shared_page_streams_while_the_owner_chats(browser, page: Page, page_server) -> None:  # noqa: ANN001
    """The owner presses Share; someone else opens the link (no login) and watches an answer
    arrive live; Stop sharing ends their view."""
    sign_up(page)
    create(page, "Shared live")
    send(page, "#fake tokens=2\nbefore sharing")
    expect(page.get_by_test_id("message-assistant").last).to_have_text("t0 t1 ")
    page.get_by_test_id("share").click()
    link = page.get_by_test_id("share-link")
    expect(link).to_have_text(re.compile(r"/s/shr_"))
    other = browser.new_context()
    viewer = other.new_page()
    try:
        viewer.goto(link.text_content() or "")
        expect(viewer.get_by_test_id("message-user")).to_have_text(["#fake tokens=2\nbefore sharing"])
        expect(viewer.get_by_test_id("status")).to_have_text("live")
        send(page, "#fake tokens=30 delay_ms=40\nwatched")
        answer = viewer.get_by_test_id("message-assistant").last
        expect(answer).to_have_text(re.compile(r"^t0 t1 "))
        assert "t29" not in (answer.text_content() or "")  # seen while it is written
        expect(answer).to_have_text("".join(f"t{i} " for i in range(30)), timeout=15000)
        page.get_by_test_id("unshare").click()
        expect(viewer.get_by_test_id("error")).to_have_text("This conversation is no longer shared.")
    finally:
        other.close()


def test_the_api_token_panel(page: Page, page_server) -> None:  # noqa: ANN001
    """Make a token (shown once), use it from a script, delete it: it stops working."""
    sign_up(page)
    page.get_by_test_id("show-tokens").click()
    page.get_by_test_id("token-name").fill("my script")
    page.get_by_test_id("create-token").click()
    secret = page.get_by_test_id("new-token")
    expect(secret).to_have_text(re.compile(r"^rtllm_"))
    expect(page.get_by_test_id("token-item")).to_have_text(["my script✕"])
    headers = {"Authorization": f"Bearer {secret.text_content()}"}
    assert httpx.get(page_server.url + "/api/users/me", headers=headers).status_code == 200
    page.get_by_test_id("delete-token").click()
    expect(page.get_by_test_id("token-item")).to_have_count(0)
    assert httpx.get(page_server.url + "/api/users/me", headers=headers).status_code == 401
