"""Conversation features (DESIGN.md "Conversation features"): update, paging and search,
regenerate, edit and resend, automatic titles, usage, export — over HTTP, SSE and
WebSocket, on every database and broker."""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import parse_stream
from tests.test_chat import chat, chat_events, history, new_chat
from tests.wsclient import Socket


def answer_of(events: list[dict[str, Any]]) -> str:
    return next(e["data"] for e in events if e["event"] == "full_response")


def update(api: Api, headers: dict[str, str], cid: int | str, body: Any) -> httpx.Response:
    return api.http.post(f"/api/conversations/update/{cid}", json=body, headers=headers)


def listing(api: Api, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = api.http.get("/api/conversations/list", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json())


def regenerate(api: Api, headers: dict[str, str], cid: int) -> httpx.Response:
    return api.http.post(f"/api/chat/{cid}/regenerate", headers=headers)


def assert_answer_stream(events: list[dict[str, Any]], cid: int) -> None:
    """An answer after a truncate: truncate, message*, done, full_response; ids increasing."""
    types = [e["event"] for e in events]
    assert types[0] == "truncate" and types[-2:] == ["done", "full_response"], types
    assert set(types[1:-2]) <= {"message", "user_message"}
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert all(e["conversation_id"] == cid for e in events)
    assert "".join(e["data"] for e in events if e["event"] == "message") == events[-1]["data"]


# -- update -----------------------------------------------------------------------------

def test_update_changes_what_the_next_answer_uses(api: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(api, title="before")
    response = update(api, headers, cid, {"title": "  after  ", "system_prompt": "Answer in French.",
                                          "api_key": "sk-conversation-key-9876", "model": "fake-other"})
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["conversation_id"] == cid and shown["title"] == "after" and shown["model"] == "fake-other"
    assert shown["api_key"].endswith("9876") and "conversation-key" not in shown["api_key"]
    assert set(shown) == {"conversation_id", "title", "model", "api_key", "created_time", "params"}
    marker = f"#fake tokens=2\n{uuid.uuid4()}"
    assert chat(api, headers, cid, marker).status_code == 200
    sent = upstream.request_for(marker)
    assert sent.body["model"] == "fake-other"
    assert sent.body["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert sent.headers["authorization"] == "Bearer sk-conversation-key-9876"
    assert api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["title"] == "after"
    # An empty api_key removes the conversation's own key: the provider's is used again.
    assert update(api, headers, cid, {"api_key": ""}).json()["api_key"] == ""
    marker = f"#fake tokens=2\n{uuid.uuid4()}"
    chat(api, headers, cid, marker)
    assert upstream.request_for(marker).headers["authorization"] != "Bearer sk-conversation-key-9876"


@pytest.mark.parametrize("body, fragment", [
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": 7}, "title"),
    ({"title": "x" * 10_000}, "title"),
    ({"model": "no-such-model"}, "not served"),
    ({"model": None, "title": None}, "must be a string"),  # leave a field out to keep it
    ({}, "nothing to update"),
    ({"owner": 1}, "unknown field"),
    ({"system_prompt": ["a"]}, "system_prompt"),
    ({"api_key": "a\x00b"}, "NUL"),
    ([1, 2], "JSON object"),
])
def test_update_refuses_bad_input(api: Api, body: Any, fragment: str) -> None:
    headers, cid = new_chat(api, title="kept")
    response = update(api, headers, cid, body)
    assert response.status_code == 400 and fragment in response.json()["error"], response.text
    assert api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["title"] == "kept"


def test_update_someone_elses_conversation_is_not_found(api: Api) -> None:
    _, theirs = new_chat(api, title="theirs")
    mine = api.new_user()
    response = update(api, mine, theirs, {"title": "mine now"})
    missing = update(api, mine, 99_999_999, {"title": "mine now"})
    assert response.status_code == missing.status_code == 404
    assert response.json() == missing.json()
    assert update(api, mine, "abc", {"title": "x"}).status_code == 400


def test_update_while_answering_applies_to_the_next_answer(api: Api, upstream: FakeUpstream) -> None:
    """Not refused: the running answer keeps the settings it started with."""
    headers, cid = new_chat(api)
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=40 delay_ms=10"})
        socket.recv_until("message")
        assert update(api, headers, cid, {"model": "fake-next", "system_prompt": "New prompt."}).status_code == 200
        events = socket.recv_until("full_response")
    assert events[-1]["data"] == "".join(f"t{i} " for i in range(40))
    marker = f"#fake tokens=1\n{uuid.uuid4()}"
    chat(api, headers, cid, marker)
    assert upstream.request_for(marker).body["model"] == "fake-next"


# -- list: paging and search ------------------------------------------------------------

def test_list_without_parameters_answers_as_before(api: Api) -> None:
    headers = api.new_user()
    ids = [api.create_conversation(headers, title=f"c{i}")["conversation_id"] for i in range(3)]
    found = listing(api, headers)
    assert [c["conversation_id"] for c in found] == ids[::-1]
    assert all(set(c) == {"conversation_id", "title", "created_time"} for c in found)


def test_paging_with_a_cursor_neither_skips_nor_repeats_while_others_are_created(api: Api) -> None:
    headers = api.new_user()
    ids = [api.create_conversation(headers, title=f"c{i}")["conversation_id"] for i in range(25)]
    stop = threading.Event()

    def create_more() -> None:
        with httpx.Client(base_url=str(api.http.base_url), timeout=30) as client:
            while not stop.is_set():
                client.post("/api/conversations/create", json={"title": "new"}, headers=headers)

    creator = threading.Thread(target=create_more)
    creator.start()
    try:
        seen: list[int] = []
        before = None
        while True:
            params = {"limit": 4} | ({"before": before} if before else {})
            page = listing(api, headers, **params)
            assert len(page) <= 4
            if before is None:
                page = [c for c in page if c["conversation_id"] <= ids[-1]]  # created meanwhile
            if not page:
                break
            seen += [c["conversation_id"] for c in page]
            before = page[-1]["conversation_id"]
    finally:
        stop.set()
        creator.join(10)
    assert seen == ids[::-1]


@pytest.mark.parametrize("params", [
    {"limit": 0}, {"limit": -1}, {"limit": 10**30}, {"limit": 1001}, {"limit": "ten"}, {"limit": "1.5"},
    {"before": 0}, {"before": "x"}, {"before": -5}, {"q": "x" * 201}, {"limit": "--1"}, {"before": "--5"},
    {"limit": "1e3"}, {"limit": " 5"}, {"limit": "٣"},
])
def test_list_refuses_bad_parameters(api: Api, params: dict[str, Any]) -> None:
    headers = api.new_user()
    response = api.http.get("/api/conversations/list", params=params, headers=headers)
    assert response.status_code == 400, response.text
    assert "error" in response.json()


def test_search_matches_titles_and_messages_case_insensitively_and_literally(api: Api) -> None:
    headers = api.new_user()

    def conversation(title: str, message: str | None = None) -> int:
        cid = api.create_conversation(headers, title=title)["conversation_id"]
        if message is not None:
            assert chat(api, headers, cid, message).status_code == 200
        return cid

    travel = conversation("Trip to Lisbon")
    recipe = conversation("Dinner", "How long do I bake SOURDOUGH bread?")
    percent = conversation("Growth", "We grew 100% this year; 100_x and back\\slash it's \"quoted\"")
    other = conversation("Unrelated", "nothing to see")

    def ids(q: str) -> set[int]:
        return {c["conversation_id"] for c in listing(api, headers, q=q)}

    assert ids("lisbon") == {travel}  # title, another case
    assert ids("sourdough") == {recipe}  # message text, another case
    assert ids("Sourdough Bread") == {recipe}
    assert ids("100%") == {percent}  # LIKE wildcards match themselves
    assert ids("%") == {percent}
    assert ids("0_x") == {percent}
    assert ids("_") == {percent}
    assert ids("back\\slash") == {percent}
    assert ids("it's") == {percent}  # quotes: SQL and FTS syntax are not injected
    assert ids('"quoted"') == {percent}
    assert ids("' OR 1=1 --") == set()
    assert ids("zz") == set()  # two characters: the scan path
    assert ids("to") == {travel, other}  # "Trip to", "nothing to"
    assert ids("   ") == ids("") == {travel, recipe, percent, other}  # blank: no filter
    assert [c["conversation_id"] for c in listing(api, headers, q="o", limit=2)] == [other, percent]
    # Someone else's conversations never match.
    stranger = api.new_user()
    assert listing(api, stranger, q="sourdough") == []


def test_search_sees_every_branch_and_deletes(api: Api) -> None:
    """An edit keeps the old version (on a branch of its own): both are found."""
    headers, cid = new_chat(api, title="t")
    chat(api, headers, cid, "#fake tokens=1\nalpha-bravo-charlie")
    assert [c["conversation_id"] for c in listing(api, headers, q="bravo")] == [cid]
    first = history(api, headers, cid)[0]["message_id"]
    response = api.http.post(f"/api/chat/{cid}", json={"message": "#fake tokens=1\ndelta", "edit_message_id": first},
                             headers=headers)
    assert response.status_code == 200
    assert [c["conversation_id"] for c in listing(api, headers, q="bravo")] == [cid]
    assert [c["conversation_id"] for c in listing(api, headers, q="delta")] == [cid]
    api.http.post(f"/api/conversations/del/{cid}", headers=headers)
    assert listing(api, headers, q="delta") == [] and listing(api, headers, q="bravo") == []


# -- regenerate -------------------------------------------------------------------------

def test_regenerate_replaces_the_last_answer(api: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(api)
    question = f"#fake tokens=3\n{uuid.uuid4()}"
    first = chat_events(api, headers, cid, question)
    before = history(api, headers, cid)
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        response = regenerate(api, headers, cid)
        assert response.status_code == 200, response.text
        events = parse_stream(response.content)
        assert_answer_stream(events, cid)
        assert events[0]["from_message_id"] == events[0]["through_message_id"] == before[1]["message_id"]
        assert events[0]["id"] > first[-1]["id"]
        assert socket.recv_until("full_response") == events  # every subscriber sees it
    after = history(api, headers, cid)
    assert [m["role"] for m in after] == ["user", "assistant"]
    assert after[0] == before[0]
    assert after[1]["message_id"] > before[1]["message_id"]  # a new message, a new id
    assert after[1]["content"] == events[-1]["data"]
    # The same prompt went upstream again.
    prompts = [r.body["messages"] for r in upstream.received if r.body["messages"][-1]["content"] == question]
    assert len(prompts) == 2 and prompts[0] == prompts[1]
    # A client resuming from before the regeneration replays no old turn.
    with Socket(str(api.http.base_url), cid, headers, query="last_event_id=0") as resumed:
        assert resumed.recv()["event"] == "ready"
        assert resumed.recv_until("full_response") == events


def test_regenerate_after_a_failed_answer_answers_the_last_message(api: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(api)
    question = f"#fake tokens=3 error_after=1\n{uuid.uuid4()}"
    failed = chat_events(api, headers, cid, question)
    assert failed[-1]["event"] == "error"
    assert [m["role"] for m in history(api, headers, cid)] == ["user"]
    response = regenerate(api, headers, cid)
    assert response.status_code == 200
    events = parse_stream(response.content)
    # No answer to drop, so no truncate: the same prompt is sent again (and the directive
    # makes it fail the same way, which ends the stream with an error, well formed).
    assert [e["event"] for e in events] == ["message", "error"]
    sent = [r.body["messages"] for r in upstream.received if r.body["messages"][-1]["content"] == question]
    assert len(sent) == 2 and sent[0] == sent[1]
    assert [m["role"] for m in history(api, headers, cid)] == ["user"]


def test_a_refused_regenerate_keeps_the_old_answer(api: Api) -> None:
    """The old answer is dropped only once the model has accepted the new request."""
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=2")
    before = history(api, headers, cid)
    assert update(api, headers, cid, {"model": "dead-model"}).status_code == 200  # unreachable
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        refused = regenerate(api, headers, cid)
        assert refused.status_code == 502
        error = socket.recv()
        assert error["event"] == "error"  # subscribers are told; no truncate came first
    assert history(api, headers, cid) == before


def test_regenerate_refusals(api: Api) -> None:
    headers, cid = new_chat(api)
    empty = regenerate(api, headers, cid)
    assert empty.status_code == 409 and "nothing to regenerate" in empty.json()["error"]
    stranger = api.new_user()
    chat(api, headers, cid, "#fake tokens=1")
    assert regenerate(api, stranger, cid).status_code == 404
    assert regenerate(api, headers, 99_999_999).status_code == 404
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=200 delay_ms=10"})
        socket.recv_until("message")
        busy = regenerate(api, headers, cid)
        assert busy.status_code == 409
        socket.send({"type": "regenerate"})
        frames = socket.recv_until("full_response")
        assert any(f["event"] == "error" and "already running" in f["data"] for f in frames), [f for f in frames if f["event"] != "message"]
    assert [m["role"] for m in history(api, headers, cid)] == ["user", "assistant"] * 2


def test_regenerate_over_websocket(api: Api) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=2")
    old = history(api, headers, cid)[1]
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "regenerate"})
        events = socket.recv_until("full_response")
    assert_answer_stream(events, cid)
    new = history(api, headers, cid)[1]
    assert new["message_id"] > old["message_id"] and new["content"] == events[-1]["data"]


# -- edit and resend --------------------------------------------------------------------

def test_edit_replaces_the_message_on_the_active_branch(api: Api) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=2\nfirst question")
    chat(api, headers, cid, "#fake tokens=2\nsecond question")
    old = history(api, headers, cid)
    assert len(old) == 4
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        response = api.http.post(f"/api/chat/{cid}", headers=headers,
                                 json={"message": "#fake tokens=3\nfirst, edited", "edit_message_id": old[0]["message_id"]})
        assert response.status_code == 200, response.text
        events = parse_stream(response.content)
        assert_answer_stream(events, cid)
        assert events[0]["from_message_id"] == old[0]["message_id"]
        assert events[0]["through_message_id"] == old[-1]["message_id"]
        assert events[1]["event"] == "user_message" and events[1]["data"] == "#fake tokens=3\nfirst, edited"
        assert socket.recv_until("full_response") == events
    new = history(api, headers, cid)
    assert [m["content"] for m in new] == ["#fake tokens=3\nfirst, edited", "t0 t1 t2 "]
    assert new[0]["message_id"] > old[-1]["message_id"]  # ids are never reused
    assert events[1]["message_id"] == new[0]["message_id"]


def test_edit_the_last_message_over_websocket(api: Api) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=2\nkeep me")
    chat(api, headers, cid, "#fake tokens=2\nchange me")
    old = history(api, headers, cid)
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=1\nchanged", "edit_message_id": old[2]["message_id"]})
        events = socket.recv_until("full_response")
    assert_answer_stream(events, cid)
    assert [m["content"] for m in history(api, headers, cid)] == [old[0]["content"], old[1]["content"],
                                                                   "#fake tokens=1\nchanged", "t0 "]


@pytest.mark.parametrize("edit, fragment", [
    ("assistant", "user message"),
    (99_999, "user message"),
    ("text", "edit_message_id"),
    (0, "edit_message_id"),
    (True, "edit_message_id"),
    (1.5, "edit_message_id"),
    ("--1", "edit_message_id"),
])
def test_edit_refuses_what_it_cannot_edit(api: Api, edit: Any, fragment: str) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=1")
    before = history(api, headers, cid)
    target = before[1]["message_id"] if edit == "assistant" else edit
    response = api.http.post(f"/api/chat/{cid}", headers=headers, json={"message": "again", "edit_message_id": target})
    assert response.status_code == 400 and fragment in response.json()["error"], response.text
    assert history(api, headers, cid) == before  # nothing dropped, nothing added
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "again", "edit_message_id": target})
        error = socket.recv()
        assert error["event"] == "error" and fragment in error["data"]
        socket.send({"type": "ping"})
        assert socket.recv()["event"] == "pong"  # the socket stays open
    assert history(api, headers, cid) == before


def test_edit_while_answering_is_refused(api: Api) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=1")
    first = history(api, headers, cid)[0]["message_id"]
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=200 delay_ms=10"})
        socket.recv_until("message")
        busy = api.http.post(f"/api/chat/{cid}", headers=headers, json={"message": "x", "edit_message_id": first})
        assert busy.status_code == 409
        socket.recv_until("full_response")
    assert len(history(api, headers, cid)) == 4


# -- usage ------------------------------------------------------------------------------

def test_usage_from_an_upstream_that_reports_it(api: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(api)
    events = chat_events(api, headers, cid, "#fake tokens=3 usage=12,34")
    done = next(e for e in events if e["event"] == "done")
    assert done["usage"] == {"prompt_tokens": 12, "completion_tokens": 34, "estimated": False}
    assert upstream.request_for("#fake tokens=3 usage=12,34").body["stream_options"] == {"include_usage": True}
    answer = history(api, headers, cid)[1]
    assert answer["usage"] == {"prompt_tokens": 12, "completion_tokens": 34, "estimated": False}
    assert "usage" not in history(api, headers, cid)[0]  # user messages have none
    me = api.http.get("/api/users/me", headers=headers).json()
    assert me["usage"] == {"prompt_tokens": 12, "completion_tokens": 34}


def test_usage_is_estimated_where_none_comes_and_totals_outlive_conversations(api: Api) -> None:
    headers, cid = new_chat(api)
    chat_events(api, headers, cid, "#fake tokens=8")
    usage = history(api, headers, cid)[1]["usage"]
    assert usage["estimated"] is True
    assert usage["completion_tokens"] == len("".join(f"t{i} " for i in range(8))) // 4
    assert usage["prompt_tokens"] > 0
    _, other = new_chat(api)
    second = api.create_conversation(headers, model="fake-model")["conversation_id"]
    chat_events(api, headers, second, "#fake tokens=1 usage=5,6")
    me = api.http.get("/api/users/me", headers=headers).json()["usage"]
    assert me == {"prompt_tokens": usage["prompt_tokens"] + 5, "completion_tokens": usage["completion_tokens"] + 6}
    api.http.post(f"/api/conversations/del/{cid}", headers=headers)
    assert api.http.get("/api/users/me", headers=headers).json()["usage"] == me
    fresh = api.new_user()
    assert api.http.get("/api/users/me", headers=fresh).json()["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}


# -- export -----------------------------------------------------------------------------

def test_export_json_and_markdown(api: Api) -> None:
    headers, cid = new_chat(api, title="Export *me*", system_prompt="Be brief.")
    chat(api, headers, cid, "#fake tokens=2 usage=3,4\nQuestion with <html> & `code`")
    as_json = api.http.get(f"/api/conversations/export/{cid}", headers=headers)
    assert as_json.status_code == 200
    assert as_json.headers["content-disposition"] == f'attachment; filename="conversation-{cid}.json"'
    document = as_json.json()
    assert document["conversation_id"] == cid and document["title"] == "Export *me*"
    assert document["system_prompt"] == "Be brief."
    shown = history(api, headers, cid)  # one branch: the whole conversation, without sibling ids
    assert document["messages"] == [{k: v for k, v in m.items() if k != "sibling_ids"} for m in shown]
    assert document["active_leaf_id"] == shown[-1]["message_id"]
    assert document["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "estimated": False}
    default = api.http.get(f"/api/conversations/export/{cid}", params={"format": "json"}, headers=headers)
    assert default.json()["messages"] == document["messages"]
    markdown = api.http.get(f"/api/conversations/export/{cid}", params={"format": "markdown"}, headers=headers)
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    text = markdown.text
    assert text.startswith("# Export *me*\n")
    assert "## System prompt\n\nBe brief." in text
    assert "Question with <html> & `code`" in text and "## Assistant" in text and "t0 t1 " in text
    assert "*Tokens: 3 prompt, 4 completion*" in text


def test_export_refusals(api: Api) -> None:
    headers, cid = new_chat(api)
    assert api.http.get(f"/api/conversations/export/{cid}", params={"format": "pdf"}, headers=headers).status_code == 400
    stranger = api.new_user()
    mine = api.http.get(f"/api/conversations/export/{cid}", headers=stranger)
    missing = api.http.get("/api/conversations/export/99999999", headers=stranger)
    assert mine.status_code == missing.status_code == 404 and mine.json() == missing.json()
    assert api.http.get(f"/api/conversations/export/{cid}").status_code == 401


# -- automatic titles -------------------------------------------------------------------

@pytest.fixture(scope="module")
def titled(database: str, broker: str, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A server with automatic titles on (the shared test server has them off)."""
    workdir = tmp_path_factory.mktemp("titled")
    config = base_config(workdir, database, upstream, broker)
    config["llm"]["auto_titles"] = True
    server = ServerProcess(write_config(workdir / "config.yaml", config), workdir).start()
    client = Api(server.url)
    yield client
    client.http.close()
    server.stop()


def test_untitled_conversation_gets_a_title_from_its_model(titled: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(titled)  # fake-model: the model is asked
    topic = f"Plan a weekend in Porto {uuid.uuid4()}"
    with Socket(str(titled.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": f"#fake tokens=3\n{topic}"})
        socket.recv_until("full_response")
        title = socket.recv_until("title")[-1]
    assert title["data"] == "t0 t1 t2 t3 t4"  # what the fake model answers a title request with
    asked = [r for r in upstream.received if topic in r.body["messages"][-1]["content"]
             and r.body["messages"][0]["content"].startswith("Write a title")]
    assert len(asked) == 1 and asked[0].body["max_tokens"] == 24
    assert titled.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["title"] == title["data"]
    chat(titled, headers, cid, "#fake tokens=1")  # the second answer asks for no title
    assert len([r for r in upstream.received if r.body["messages"][0]["content"].startswith("Write a title")
                and topic in r.body["messages"][-1]["content"]]) == 1


def test_a_reasoning_models_title_is_its_answer_not_its_thinking(titled: Api) -> None:
    headers, cid = new_chat(titled)
    with Socket(str(titled.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=2 title_think=3\nA thoughtful topic"})
        socket.recv_until("full_response")
        assert socket.recv_until("title")[-1]["data"] == "t0 t1 t2 t3 t4"


def test_demo_model_titles_come_from_the_first_message(titled: Api) -> None:
    headers, cid = new_chat(titled, model="demo")
    with Socket(str(titled.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "\n  How do   tides work on   the Atlantic coast of Portugal today?"})
        socket.recv_until("full_response")
        title = socket.recv_until("title")[-1]["data"]
    assert title == "How do tides work on the Atlantic coast…"
    assert listing(titled, headers)[0]["title"] == title


def test_a_title_set_while_the_model_is_titling_wins(titled: Api, upstream: FakeUpstream) -> None:
    """The user renames the conversation while the automatic title is being written: the
    user's title stays, and the last title event anyone sees is the user's."""
    headers, cid = new_chat(titled)
    with Socket(str(titled.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        marker = f"title_delay_ms=300 {uuid.uuid4()}"
        socket.send({"type": "message", "content": f"#fake tokens=1\n{marker}"})
        socket.recv_until("full_response")
        def title_request() -> Any:
            return next((r for r in upstream.received if r.body["messages"][0]["content"].startswith("Write a title")
                         and marker in r.body["messages"][-1]["content"]), None)

        assert upstream.wait_for(lambda: title_request() is not None)  # in flight: 5 tokens x 300 ms
        assert not title_request().completed
        assert update(titled, headers, cid, {"title": "Mine"}).status_code == 200
        assert socket.recv_until("title")[-1]["data"] == "Mine"  # the rename, announced
        assert upstream.wait_for(lambda: title_request().completed, timeout=10)
        socket.send({"type": "ping"})
        assert socket.recv()["event"] == "pong"  # no automatic title event after it
    assert titled.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["title"] == "Mine"


def test_a_title_the_user_set_is_never_overwritten(titled: Api) -> None:
    headers, cid = new_chat(titled, title="Mine")
    untitled = titled.create_conversation(headers, model="demo")["conversation_id"]
    assert update(titled, headers, untitled, {"title": "Set before answering"}).status_code == 200
    for conversation in (cid, untitled):
        with Socket(str(titled.http.base_url), conversation, headers) as socket:
            assert socket.recv()["event"] == "ready"
            socket.send({"type": "message", "content": "#fake tokens=1\nhello"})
            socket.recv_until("full_response")
            socket.send({"type": "ping"})
            assert socket.recv()["event"] == "pong"  # no title event came first
    titles = {c["conversation_id"]: c["title"] for c in listing(titled, headers)}
    assert titles == {cid: "Mine", untitled: "Set before answering"}


def test_a_title_on_its_way_to_a_deleted_conversation_lands_nowhere(titled: Api, upstream: FakeUpstream) -> None:
    """The automatic title of a conversation deleted while its model was titling it is
    written nowhere: not on the conversation created next (which got the deleted id on
    SQLite), and no `title` event reaches that conversation's subscribers."""
    alice, bob = titled.new_user(), titled.new_user()
    doomed = titled.create_conversation(alice, model="fake-model")["conversation_id"]
    marker = f"title_delay_ms=300 {uuid.uuid4()}"
    assert chat_events(titled, alice, doomed, f"#fake tokens=1\n{marker}")[-1]["event"] == "full_response"

    def title_request() -> Any:
        return next((r for r in upstream.received if r.body["messages"][0]["content"].startswith("Write a title")
                     and marker in r.body["messages"][-1]["content"]), None)

    assert upstream.wait_for(lambda: title_request() is not None)  # in flight: 5 tokens x 300 ms
    assert titled.http.post(f"/api/conversations/del/{doomed}", headers=alice).status_code == 200
    theirs = titled.create_conversation(bob, model="fake-model")["conversation_id"]
    with Socket(str(titled.http.base_url), theirs, bob) as socket:
        assert socket.recv()["event"] == "ready"
        assert upstream.wait_for(lambda: title_request().completed, timeout=10)
        time.sleep(0.5)  # the title would have been written by now
        socket.send({"type": "ping"})
        assert socket.recv()["event"] == "pong"  # no title event came first
    assert [(c["conversation_id"], c["title"]) for c in listing(titled, bob)] == [(theirs, "")]
