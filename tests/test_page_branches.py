"""The page's versions of a message (DESIGN.md, Branches) in a real browser: edit,
regenerate, "‹ k/n ›", fork; a second tab keeps in step."""
# ruff: noqa: F811  (test_page's fixtures are imported, and test arguments share their names)
from __future__ import annotations

from playwright.sync_api import Browser, Locator, Page, expect

from tests.servers import ServerProcess
from tests.test_page import SHOTS, answer, browser, create, log_in, page, page_server, send, sign_up, tid  # noqa: F401


def controls(page: Page, role: str, index: int = 0) -> Locator:
    """The controls row under the index-th message of `role` shown."""
    return page.locator(f"#messages li.controls.for-{role}").nth(index)


def edit_first_question(page: Page, text: str) -> None:
    controls(page, "user").get_by_test_id("edit-message").click()
    expect(tid(page, "message-input")).to_have_value(tid(page, "message-user").first.text_content() or "")
    tid(page, "message-input").fill(text)
    tid(page, "message-input").press("Enter")


def test_edit_regenerate_and_step_through_versions(page: Page) -> None:
    sign_up(page)
    create(page, "Versions")
    send(page, "#fake tokens=2\nfirst question")
    expect(tid(page, "message-assistant").last).to_have_text(answer(2))
    expect(controls(page, "user").get_by_test_id("branch-position")).to_have_count(0)  # one version only

    edit_first_question(page, "#fake tokens=3\nfirst question, edited")
    expect(tid(page, "message-user")).to_have_text(["#fake tokens=3\nfirst question, edited"])
    expect(tid(page, "message-assistant")).to_have_text([answer(3)])
    position = controls(page, "user").get_by_test_id("branch-position")
    expect(position).to_have_text("2/2")
    expect(controls(page, "user").get_by_test_id("branch-next")).to_be_disabled()
    page.screenshot(path=str(SHOTS / "20-versions.png"))

    controls(page, "user").get_by_test_id("branch-prev").click()
    expect(tid(page, "message-user")).to_have_text(["#fake tokens=2\nfirst question"])
    expect(tid(page, "message-assistant")).to_have_text([answer(2)])
    expect(position).to_have_text("1/2")

    controls(page, "assistant").get_by_test_id("regenerate").click()
    answer_position = controls(page, "assistant").get_by_test_id("branch-position")
    expect(answer_position).to_have_text("2/2")
    expect(tid(page, "message-assistant")).to_have_text([answer(2)])
    controls(page, "assistant").get_by_test_id("branch-prev").click()
    expect(answer_position).to_have_text("1/2")
    expect(position).to_have_text("1/2")  # still the first question's first version
    page.reload()  # what the server keeps, read again
    expect(controls(page, "assistant").get_by_test_id("branch-position")).to_have_text("1/2")
    expect(controls(page, "user").get_by_test_id("branch-position")).to_have_text("1/2")


def test_a_second_tab_follows_edits_and_switches(browser: Browser, page: Page, page_server: ServerProcess) -> None:
    username = sign_up(page)
    create(page, "Two tabs, two versions")
    send(page, "#fake tokens=2\nquestion")
    expect(tid(page, "message-assistant").last).to_have_text(answer(2))
    other_context = browser.new_context()
    other = other_context.new_page()
    try:
        other.goto(page_server.url + "/")
        log_in(other, username)
        tid(other, "conversation-item").filter(has_text="Two tabs").click()
        expect(tid(other, "message-assistant")).to_have_text([answer(2)])

        edit_first_question(page, "#fake tokens=4\nquestion, again")
        expect(tid(other, "message-user")).to_have_text(["#fake tokens=4\nquestion, again"])
        expect(tid(other, "message-assistant")).to_have_text([answer(4)])
        expect(controls(other, "user").get_by_test_id("branch-position")).to_have_text("2/2")

        controls(page, "user").get_by_test_id("branch-prev").click()
        expect(tid(other, "message-user")).to_have_text(["#fake tokens=2\nquestion"])
        expect(tid(other, "message-assistant")).to_have_text([answer(2)])
        expect(controls(other, "user").get_by_test_id("branch-position")).to_have_text("1/2")
        other.screenshot(path=str(SHOTS / "21-second-tab-switched.png"))
    finally:
        other_context.close()


def test_fork_opens_a_new_conversation_up_to_that_message(page: Page) -> None:
    sign_up(page)
    create(page, "Forked from")
    send(page, "#fake tokens=2\none")
    expect(tid(page, "message-assistant").last).to_have_text(answer(2))
    send(page, "#fake tokens=3\ntwo")
    expect(tid(page, "message-assistant").last).to_have_text(answer(3))
    controls(page, "assistant", 0).get_by_test_id("fork").click()
    expect(tid(page, "conversation-item")).to_have_count(2)
    expect(tid(page, "message-user")).to_have_text(["#fake tokens=2\none"])
    expect(tid(page, "message-assistant")).to_have_text([answer(2)])
    expect(page.locator("#chat-title")).to_have_text("Forked from")
    send(page, "#fake tokens=1\nin the fork")  # the fork goes on by itself
    expect(tid(page, "message-assistant")).to_have_text([answer(2), answer(1)])
    tid(page, "conversation-item").last.click()  # the original is as it was
    expect(tid(page, "message-assistant")).to_have_text([answer(2), answer(3)])
