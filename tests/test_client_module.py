"""static/realtime-llm.js, the client module other UIs import, in a real browser against
the real server: events and commands, resume after a dropped socket with no gap and no
duplicate, reconnecting across a server restart, two tabs, and the ends it reports
(gone, unauthorized) without retrying forever."""
# ruff: noqa: F811  (test_page's fixtures are imported, and test arguments share their names)
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import PASSWORD, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.test_page import answer, browser, page_server  # noqa: F401

HARNESS = """async ({ conversationId, token, lastEventId, ticketStatus, ticket }) => {
    const { ConversationClient } = await import('/static/realtime-llm.js');
    window.events = [];
    window.statuses = [];
    const options = { conversationId, lastEventId };
    if (ticketStatus) {
        options.ticket = async () => { const e = new Error('refused'); e.status = ticketStatus; throw e; };
    } else if (ticket) {
        options.ticket = async () => ticket;
    } else {
        options.token = token;
    }
    const client = new ConversationClient(options);
    for (const type of ['ready', 'user_message', 'reasoning', 'message', 'done', 'full_response', 'error',
                        'truncate', 'branch', 'title', 'resync', 'gone', 'unauthorized']) {
        client.on(type, (event) => window.events.push(event));
    }
    client.on('status', (event) => window.statuses.push(event.status));
    window.client = client;
    client.connect();
}"""


def account(server: ServerProcess) -> tuple[str, int]:
    """A new user's token and a conversation of theirs on the fake model."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        username = f"mod_{uuid.uuid4().hex[:8]}"
        http.post("/api/users/register", json={"username": username, "password": PASSWORD})
        token = http.post("/api/users/login", json={"username": username, "password": PASSWORD}).json()["token"]
        created = http.post("/api/conversations/create", json={"model": "fake-model", "title": "module"},
                            headers={"Authorization": f"Bearer {token}"}).json()
    return token, created["conversation_id"]


@pytest.fixture
def tab(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def start_client(page: Page, server: ServerProcess, token: str, conversation_id: int, **options: Any) -> None:
    page.goto(server.url + "/")  # the module is imported under the page's own CSP
    page.evaluate(HARNESS, {"conversationId": conversation_id, "token": token, "lastEventId": None, **options})


def wait_for(page: Page, expression: str, timeout: float = 15000) -> Any:
    """Poll `expression` until it is truthy (wait_for_function would eval(), which the
    page's CSP refuses)."""
    deadline = time.monotonic() + timeout / 1000
    while not (value := page.evaluate(expression)):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)
    return value


def events(page: Page, kind: str | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate("window.events")
    return [e for e in found if kind is None or e["event"] == kind]


def answered(page: Page, count: int = 1) -> None:
    wait_for(page, f"window.events.filter(e => e.event === 'full_response').length >= {count}")


def test_resume_after_dropped_sockets_has_no_gap_and_no_duplicate(tab: Page, page_server: ServerProcess) -> None:
    """The socket is dropped five times while an answer streams: every delta arrives once,
    in order, and they add up to the saved answer."""
    token, cid = account(page_server)
    start_client(tab, page_server, token, cid)
    wait_for(tab, "window.client.open")
    assert tab.evaluate("window.client.send('#fake tokens=150 delay_ms=15')") is True
    wait_for(tab, "window.events.some(e => e.event === 'message')")
    for _ in range(5):
        tab.evaluate("window.client.reconnect()")
        tab.wait_for_timeout(250)
    answered(tab)
    ids = [e["id"] for e in events(tab) if "id" in e]
    assert ids == sorted(set(ids)), "ids must be strictly increasing: no duplicate, no reordering"
    deltas = "".join(e["data"] for e in events(tab, "message"))
    assert deltas == answer(150) == events(tab, "full_response")[0]["data"]
    assert len(events(tab, "ready")) >= 6  # it did reconnect each time
    assert [e["data"] for e in events(tab, "user_message")] == ["#fake tokens=150 delay_ms=15"]
    assert tab.evaluate("window.statuses")[:2] == ["connecting", "open"]


def test_commands_stop_regenerate_edit_branch_and_title(tab: Page, page_server: ServerProcess) -> None:
    token, cid = account(page_server)
    start_client(tab, page_server, token, cid)
    wait_for(tab, "window.client.open")
    tab.evaluate("window.client.send('#fake tokens=300 delay_ms=20')")
    wait_for(tab, "window.events.some(e => e.event === 'message')")
    assert tab.evaluate("window.client.generating") is True
    tab.evaluate("window.client.stop()")
    answered(tab)
    assert events(tab, "done")[-1]["reason"] == "cancelled"
    assert tab.evaluate("window.client.generating") is False

    tab.evaluate("window.client.regenerate()")
    answered(tab, 2)
    assert len(events(tab, "truncate")) == 1
    first_question = events(tab, "user_message")[0]["message_id"]
    tab.evaluate(f"window.client.edit({first_question}, '#fake tokens=2\\nedited')")
    answered(tab, 3)
    assert events(tab, "full_response")[-1]["data"] == answer(2)
    assert len(events(tab, "truncate")) == 2 and events(tab, "user_message")[-1]["data"] == "#fake tokens=2\nedited"
    tab.evaluate(f"window.client.branch({first_question})")  # back to the first version
    wait_for(tab, "window.events.some(e => e.event === 'branch')")

    with httpx.Client(base_url=page_server.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        assert http.post(f"/api/conversations/update/{cid}", json={"title": "Renamed"}).status_code == 200
    wait_for(tab, "window.events.some(e => e.event === 'title')")
    assert events(tab, "title")[-1]["data"] == "Renamed"
    tab.evaluate("window.client.close()")
    assert tab.evaluate("window.client.send('too late')") is False
    assert tab.evaluate("window.statuses").pop() == "closed"


def test_two_tabs_see_the_same_events(browser: Browser, page_server: ServerProcess) -> None:
    token, cid = account(page_server)
    contexts = [browser.new_context(), browser.new_context()]
    try:
        tabs = [context.new_page() for context in contexts]
        for tab in tabs:
            start_client(tab, page_server, token, cid)
            wait_for(tab, "window.client.open")
        tabs[0].evaluate("window.client.send('#fake tokens=30 delay_ms=10')")
        for tab in tabs:
            answered(tab)
        first, second = ([(e["event"], e.get("id"), e["data"]) for e in events(tab) if e["event"] != "ready"]
                         for tab in tabs)
        assert first == second and first[-1] == ("full_response", first[-1][1], answer(30))
    finally:
        for context in contexts:
            context.close()


def test_reconnects_across_a_server_restart(browser: Browser, upstream: FakeUpstream, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, "sqlite", upstream))
    server = ServerProcess(config, tmp_path).start()
    context = browser.new_context()
    try:
        tab = context.new_page()
        token, cid = account(server)
        start_client(tab, server, token, cid)
        wait_for(tab, "window.client.open")
        tab.evaluate("window.client.send('#fake tokens=3')")
        answered(tab)
        server.stop()
        wait_for(tab, "window.statuses.includes('reconnecting')")
        assert tab.evaluate("window.client.send('while away')") is False
        server = ServerProcess(config, tmp_path, port=server.port).start()
        wait_for(tab, "window.client.open", timeout=20000)
        assert tab.evaluate("window.events.filter(e => e.event === 'ready').length") == 2
        tab.evaluate("window.client.send('#fake tokens=4')")
        answered(tab, 2)
        assert events(tab, "full_response")[-1]["data"] == answer(4)
    finally:
        context.close()
        server.stop()


@pytest.mark.parametrize("case", ["not mine", "bad token", "ticket refused", "ticket for nothing", "tickets never valid"])
def test_ends_without_retrying(tab: Page, page_server: ServerProcess, case: str) -> None:
    """Another user's conversation is "gone", a refused token "unauthorized"; neither is
    tried again (the client stays closed)."""
    token, cid = account(page_server)
    other_token, _ = account(page_server)
    options: dict[str, Any] = {"not mine": {"token": other_token}, "bad token": {"token": "not-a-token"},
                               "ticket refused": {"ticketStatus": 401}, "ticket for nothing": {"ticketStatus": 404},
                               "tickets never valid": {"ticket": "tkt_forged"}}[case]
    expected = {"not mine": "gone", "bad token": "unauthorized", "ticket refused": "unauthorized",
                "ticket for nothing": "gone", "tickets never valid": "unauthorized"}[case]
    start_client(tab, page_server, options.get("token", token), cid, ticketStatus=options.get("ticketStatus"),
                 ticket=options.get("ticket"))
    wait_for(tab, f"window.events.some(e => e.event === '{expected}')")
    tab.wait_for_timeout(1500)  # longer than the first backoffs: nothing more happens
    assert [e["event"] for e in events(tab)] == [expected]
    # A ticket is asked anew after a refusal (it may have been stale): three refused in a row end it.
    tries = ["reconnecting"] if case == "tickets never valid" else []
    assert tab.evaluate("window.statuses") == ["connecting", *tries, "closed"]
    assert tab.evaluate("window.client.open") is False


def test_the_readme_example_runs_as_written(tab: Page, page_server: ServerProcess) -> None:
    """The README's example page, served from the server's origin, with this test's user
    and conversation in place of "ada" and 1."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split('```html\n<ol id="log">', 1)[1].split("```", 1)[0]
    token, cid = account(page_server)
    with httpx.Client(base_url=page_server.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        username = http.get("/api/users/me").json()["username"]
    html = ('<ol id="log">' + example).replace('username: "ada"', f'username: "{username}"')
    html = html.replace("conversationId: 1,", f"conversationId: {cid},")
    assert f'"{username}"' in html and f"conversationId: {cid}," in html
    # Written into a document the server served (one without the page's CSP, which allows
    # no inline script): a route-fulfilled page would not be of the server's address, and
    # Chromium lets only a loopback page open a socket to loopback.
    tab.goto(page_server.url + "/healthz")
    tab.evaluate("(html) => { document.open(); document.write(html); document.close(); }", html)
    field = tab.locator("input[name=q]")
    expect(field).to_be_enabled()  # once the socket is ready
    field.fill("#fake tokens=6 delay_ms=20")
    field.press("Enter")
    expect(tab.locator("#log li")).to_have_text(["#fake tokens=6 delay_ms=20", answer(6)])


def test_resumes_from_where_ready_said_and_connect_is_idempotent(tab: Page, page_server: ServerProcess) -> None:
    """A client that has seen no event yet resumes from the point its "ready" gave: a turn
    sent while it was away arrives whole. connect() on a running client opens no second socket."""
    token, cid = account(page_server)
    with httpx.Client(base_url=page_server.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        assert http.post(f"/api/chat/{cid}", json={"message": "#fake tokens=2\nbefore"}).status_code == 200
        start_client(tab, page_server, token, cid)
        wait_for(tab, "window.client.open")
        tab.evaluate("window.client.connect()")  # again: nothing happens
        tab.evaluate("window.client.close()")
        assert http.post(f"/api/chat/{cid}", json={"message": "#fake tokens=3\nwhile away"}).status_code == 200
    tab.evaluate("window.client.connect()")
    answered(tab)
    assert [e["data"] for e in events(tab, "user_message")] == ["#fake tokens=3\nwhile away"]  # not "before"
    assert "".join(e["data"] for e in events(tab, "message")) == answer(3)
    assert len(events(tab, "ready")) == 2
    assert tab.evaluate("window.statuses") == ["connecting", "open", "closed", "connecting", "open"]


def test_a_frame_too_large_is_an_error_and_the_client_comes_back(tab: Page, page_server: ServerProcess) -> None:
    token, cid = account(page_server)
    start_client(tab, page_server, token, cid)
    wait_for(tab, "window.client.open")
    tab.evaluate("window.client.send('x'.repeat(300 * 1024))")  # over limits.max_ws_frame_bytes: closed 1009
    wait_for(tab, "window.events.some(e => e.event === 'error')")
    assert events(tab, "error")[0]["code"] == "payload_too_large" and "id" not in events(tab, "error")[0]
    wait_for(tab, "window.events.filter(e => e.event === 'ready').length === 2")
    tab.evaluate("window.client.send('#fake tokens=2')")
    answered(tab)
