"""Branches (DESIGN.md): edits and regenerations keep every version; switch, fork — over
HTTP, SSE and WebSocket, on every database and broker, and across two processes."""
from __future__ import annotations

import functools
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.backends import redis_url
from tests.conftest import Api
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess
from tests.sse import parse_stream
from tests.test_chat import chat, history, new_chat
from tests.test_cluster import start_pair
from tests.test_features import regenerate, update
from tests.wsclient import Socket


def edit(api: Api, headers: dict[str, str], cid: int, message_id: int, text: str) -> list[dict[str, Any]]:
    response = api.http.post(f"/api/chat/{cid}", headers=headers, json={"message": text, "edit_message_id": message_id})
    assert response.status_code == 200, response.text
    return parse_stream(response.content)


def switch(api: Api, headers: dict[str, str], cid: int | str, body: Any) -> httpx.Response:
    return api.http.post(f"/api/conversations/branch/{cid}", headers=headers, json=body)


def fork(api: Api, headers: dict[str, str], cid: int | str, body: Any) -> httpx.Response:
    return api.http.post(f"/api/conversations/fork/{cid}", headers=headers, json=body)


def contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages]


def prompt_of(upstream: FakeUpstream, last: str) -> list[str]:
    """The texts (system prompt dropped) of the newest request whose last message is `last`."""
    sent = [r.body["messages"] for r in upstream.received if r.body["messages"][-1]["content"] == last]
    assert sent, f"nothing went upstream ending with {last!r}"
    return [m["content"] for m in sent[-1][1:]]


def test_edit_twice_then_switch_back_to_the_first_version(api: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(api)
    tag = uuid.uuid4().hex[:6]
    q1, q2, q2b, q2c = (f"#fake tokens=2\n{tag} {name}" for name in ("one", "two", "two again", "two, third try"))
    chat(api, headers, cid, q1)
    chat(api, headers, cid, q2)
    first = history(api, headers, cid)
    edit(api, headers, cid, first[2]["message_id"], q2b)
    second = history(api, headers, cid)
    edit(api, headers, cid, second[2]["message_id"], q2c)
    third = history(api, headers, cid)
    assert contents(third) == [q1, "t0 t1 ", q2c, "t0 t1 "]
    versions = [first[2]["message_id"], second[2]["message_id"], third[2]["message_id"]]
    assert third[2]["sibling_ids"] == versions and third[2]["parent_id"] == first[1]["message_id"]
    assert third[0]["parent_id"] is None and third[0]["sibling_ids"] == [third[0]["message_id"]]
    assert third[3]["sibling_ids"] == [third[3]["message_id"]]  # the new answer has no other version

    switched = switch(api, headers, cid, {"message_id": versions[0]})
    assert switched.status_code == 200, switched.text
    assert switched.json()["messages"] == history(api, headers, cid) == first_with_siblings(first, versions)
    q3 = f"#fake tokens=1\n{tag} three"
    chat(api, headers, cid, q3)
    assert prompt_of(upstream, q3) == [q1, "t0 t1 ", q2, "t0 t1 ", q3]  # that branch's prompt, and only it
    assert contents(history(api, headers, cid)) == [q1, "t0 t1 ", q2, "t0 t1 ", q3, "t0 "]

    # A message of a branch that is not shown is not edited: clients show the active branch,
    # and one showing another is out of date.
    shown = history(api, headers, cid)
    response = api.http.post(f"/api/chat/{cid}", headers=headers,
                             json={"message": "#fake tokens=1\nno", "edit_message_id": versions[1]})
    assert response.status_code == 400 and "active branch" in response.json()["error"]
    assert history(api, headers, cid) == shown


def first_with_siblings(first: list[dict[str, Any]], versions: list[int]) -> list[dict[str, Any]]:
    """The first branch's history as it reads once its third message has other versions."""
    return [{**m, "sibling_ids": versions} if m["message_id"] == versions[0] else m for m in first]


def test_regenerate_three_times_and_walk_the_versions(api: Api) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=3")
    answers = [history(api, headers, cid)[1]]
    for _ in range(3):
        response = regenerate(api, headers, cid)
        assert response.status_code == 200
        answers.append(history(api, headers, cid)[1])
    ids = [a["message_id"] for a in answers]
    assert answers[-1]["sibling_ids"] == ids and len(set(ids)) == 4
    assert all(a["parent_id"] == answers[0]["parent_id"] for a in answers)
    for answer in answers:  # each version is there to go back to, as it was
        shown = switch(api, headers, cid, {"message_id": answer["message_id"]}).json()["messages"]
        assert shown[1] == {**answer, "sibling_ids": ids}
    # From the oldest version, regenerating adds a fifth.
    switch(api, headers, cid, {"message_id": ids[0]})
    assert regenerate(api, headers, cid).status_code == 200
    assert history(api, headers, cid)[1]["sibling_ids"][:4] == ids


def test_fork_copies_the_branch_into_a_new_conversation(api: Api, upstream: FakeUpstream) -> None:
    headers = api.new_user()
    cid = api.create_conversation(headers, title="Original", model="fake-model", system_prompt="Be brief.",
                                  api_key="sk-forked-key-1234",
                                  params={"temperature": 0.3})["conversation_id"]
    tag = uuid.uuid4().hex[:6]
    chat(api, headers, cid, f"#fake tokens=2\n{tag} one")
    chat(api, headers, cid, f"#fake tokens=2\n{tag} two")
    original = history(api, headers, cid)
    response = fork(api, headers, cid, {"message_id": original[1]["message_id"]})
    assert response.status_code == 200, response.text
    forked = response.json()
    assert forked["conversation_id"] != cid and (forked["title"], forked["model"]) == ("Original", "fake-model")
    assert forked["api_key"] == "sk-…1234" and forked["params"] == {"temperature": 0.3}
    copy = history(api, headers, forked["conversation_id"])
    assert [(m["message_id"], m["parent_id"], m["sibling_ids"]) for m in copy] == [(1, None, [1]), (2, 1, [2])]
    kept = ("role", "content", "created_time", "usage", "reasoning")
    assert [{k: m.get(k) for k in kept} for m in copy] == [{k: m.get(k) for k in kept} for m in original[:2]]
    assert history(api, headers, cid) == original  # the original is untouched
    listed = api.http.get("/api/conversations/list", headers=headers).json()
    assert listed[0]["conversation_id"] == forked["conversation_id"]  # the newest

    question = f"#fake tokens=1\n{tag} in the fork"
    chat(api, headers, forked["conversation_id"], question)
    assert prompt_of(upstream, question) == [original[0]["content"], original[1]["content"], question]
    request = [r for r in upstream.received if r.body["messages"][-1]["content"] == question][-1]
    assert request.body["messages"][0]["content"] == "Be brief."
    assert request.headers.get("authorization") == "Bearer sk-forked-key-1234"
    assert request.body.get("temperature") == 0.3


@pytest.mark.parametrize("body, fragment", [
    ({}, "message_id"),
    ({"message_id": 0}, "message_id"),
    ({"message_id": "x"}, "message_id"),
    ({"message_id": 1.5}, "message_id"),
    ({"message_id": True}, "message_id"),
    ({"message_id": None}, "message_id"),
    ({"message_id": 2**31}, "message_id"),
    ({"message_id": 99_999}, "message of this conversation"),
    ([], "JSON object"),
])
def test_branch_and_fork_refuse_bad_input(api: Api, body: Any, fragment: str) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=1")
    before = history(api, headers, cid)
    count = len(api.http.get("/api/conversations/list", headers=headers).json())
    for call in (switch, fork):
        response = call(api, headers, cid, body)
        assert response.status_code == 400 and fragment in response.json()["error"], response.text
    assert history(api, headers, cid) == before
    assert len(api.http.get("/api/conversations/list", headers=headers).json()) == count
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "branch", **body} if isinstance(body, dict) else {"type": "branch", "message_id": body})
        error = socket.recv()
        assert error["event"] == "error" and "message" in error["data"], error
        socket.send({"type": "ping"})
        assert socket.recv()["event"] == "pong"  # the socket stays open


def test_branch_and_fork_are_the_owners_alone(api: Api) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=1")
    other_headers, other_cid = new_chat(api)
    chat(api, other_headers, other_cid, "#fake tokens=1")
    stranger = api.new_user()
    for call in (switch, fork):
        assert call(api, stranger, cid, {"message_id": 1}).status_code == 404
        assert call(api, headers, 99_999_999, {"message_id": 1}).status_code == 404
        assert call(api, headers, "abc", {"message_id": 1}).status_code == 400
        assert call(api, {}, cid, {"message_id": 1}).status_code == 401
        assert api.http.post(f"/api/conversations/branch/{cid}", headers=headers, content=b"{").status_code == 400
    assert api.http.get("/api/conversations/list", headers=stranger).json() == []


def test_switch_reaches_another_tab_and_a_resume_replays_no_other_branch(api: Api) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=2\nfirst")
    first = history(api, headers, cid)
    edit(api, headers, cid, first[0]["message_id"], "#fake tokens=3\nsecond")
    second = history(api, headers, cid)
    with Socket(str(api.http.base_url), cid, headers) as tab:
        ready = tab.recv()
        assert ready["event"] == "ready"
        assert switch(api, headers, cid, {"message_id": first[0]["message_id"]}).status_code == 200
        event = tab.recv()
        assert event["event"] == "branch" and event["data"] == ""
        assert (event["message_id"], event["leaf_message_id"]) == (first[0]["message_id"], first[1]["message_id"])
        assert event["id"] > ready["last_event_id"]
        # Over the socket itself: the same, and this socket is told like every other.
        tab.send({"type": "branch", "message_id": second[1]["message_id"]})
        event = tab.recv()
        assert event["event"] == "branch" and event["leaf_message_id"] == second[1]["message_id"]
        assert contents(history(api, headers, cid)) == contents(second)
        # Switching to where it already is changes nothing and tells nobody.
        assert switch(api, headers, cid, {"message_id": second[0]["message_id"]}).status_code == 200
        tab.send({"type": "ping"})
        assert tab.recv()["event"] == "pong"
    # A client that saw events of the old branch resumes: it gets the last switch, and no
    # message of any branch (each switch emptied the replay buffer).
    with Socket(str(api.http.base_url), cid, headers, query=f"last_event_id={ready['last_event_id']}") as resumed:
        assert resumed.recv()["event"] == "ready"
        resumed.send({"type": "ping"})
        frames = [resumed.recv()]
        while frames[-1]["event"] != "pong":
            frames.append(resumed.recv())
        assert frames[:-1] == [event], frames


def test_a_switch_is_not_taken_for_a_lost_answer(api: Api) -> None:
    """A `branch` event is the last one published and no generation holds the lock: the
    dead-generation watchdog (which checks every lock_ttl/3 = 1 s here) must not call it a
    lost answer."""
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=1\nfirst")
    first = history(api, headers, cid)
    edit(api, headers, cid, first[0]["message_id"], "#fake tokens=1\nsecond")
    with Socket(str(api.http.base_url), cid, headers) as tab:
        assert tab.recv()["event"] == "ready"
        assert switch(api, headers, cid, {"message_id": first[0]["message_id"]}).status_code == 200
        assert tab.recv()["event"] == "branch"
        time.sleep(2.5)
        tab.send({"type": "ping"})
        assert tab.recv()["event"] == "pong"  # nothing came in between


def test_switch_while_answering_is_409_and_changes_nothing(api: Api) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=1\nfirst")
    first = history(api, headers, cid)
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=200 delay_ms=10"})
        socket.recv_until("message")
        busy = switch(api, headers, cid, {"message_id": first[0]["message_id"]})
        assert busy.status_code == 409 and "generation" in busy.json()["error"]
        socket.send({"type": "branch", "message_id": first[0]["message_id"]})
        frames = socket.recv_until("full_response")
        assert any(f["event"] == "error" and "id" not in f and "generation" in f["data"] for f in frames)
        assert not [f for f in frames if f["event"] == "branch"]
    assert len(history(api, headers, cid)) == 4


def test_a_switch_racing_a_new_message_never_interleaves(api: Api) -> None:
    """Both at once: either the answer runs first (the switch is a 409, the new message
    follows the old branch) or the switch does (the message waits for it and follows the
    branch switched to). Never a message under a branch that was switched away from.
    (The switch answers the history as it is once the lock is free again: the message may
    already be in it, under the leaf switched to.)"""
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=1\nfirst")
    first = history(api, headers, cid)
    edit(api, headers, cid, first[0]["message_id"], "#fake tokens=1\nsecond")
    outcomes = set()
    for round_ in range(6):
        shown = history(api, headers, cid)
        leaf_before = shown[-1]["message_id"]
        other = next(v for v in shown[0]["sibling_ids"] if v != shown[0]["message_id"])  # the other version
        switched_to = newest_leaf(history_all(api, headers, cid), other)  # where a switch to it goes
        message = {"message": f"#fake tokens=3 delay_ms=300\nr{round_}"}  # outlasts a switch's patience
        results = race(chat=functools.partial(api.http.post, f"/api/chat/{cid}", headers=headers, json=message),
                       switch=functools.partial(switch, api, headers, cid, {"message_id": other}))
        assert results["chat"].status_code == 200, results["chat"].text
        asked = next(m for m in history_all(api, headers, cid) if m["content"].endswith(f"\nr{round_}"))
        if results["switch"].status_code == 409:
            outcomes.add("answer first")
            assert asked["parent_id"] == leaf_before
        else:
            assert results["switch"].status_code == 200, results["switch"].text
            outcomes.add("switch first")
            assert asked["parent_id"] == switched_to != leaf_before
            shown_by_switch = [m["message_id"] for m in results["switch"].json()["messages"]]
            assert shown_by_switch[0] == other and switched_to in shown_by_switch  # (and what followed it)
        assert history(api, headers, cid)[-2]["message_id"] == asked["message_id"]  # on the active branch
    assert outcomes  # which won each round is up to the scheduler (here, both happen in six rounds)


def race(**calls: Any) -> dict[str, httpx.Response]:
    """Make the calls at the same moment, each from a thread of its own."""
    start = threading.Barrier(len(calls))
    results: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        start.wait()
        results[name] = calls[name]()

    racers = [threading.Thread(target=send, args=(name,)) for name in calls]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    return results


def newest_leaf(messages: list[dict[str, Any]], message_id: int) -> int:
    """Where the branch through `message_id` ends: below it, the newest child at each step."""
    children: dict[int, list[int]] = {}
    for m in messages:
        children.setdefault(m["parent_id"], []).append(m["message_id"])
    while children.get(message_id):
        message_id = max(children[message_id])
    return message_id


def history_all(api: Api, headers: dict[str, str], cid: int) -> list[dict[str, Any]]:
    """Every message of every branch, with its parent (the JSON export)."""
    return list(api.http.get(f"/api/conversations/export/{cid}", headers=headers).json()["messages"])


def test_a_regenerate_that_saves_nothing_leaves_the_old_answer(api: Api) -> None:
    """Stopped before its first token, the new version is nothing: the old answer is still
    the branch's, and the clients that were told to take it away are told to re-read."""
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=1 delay_ms=1500")
    before = history(api, headers, cid)
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "regenerate"})
        assert socket.recv()["event"] == "truncate"  # accepted: the old answer is taken off the screen
        socket.send({"type": "stop"})
        restored, done, _ = socket.recv_until("full_response")
        # Before `done`, so a stream that ends there (the regenerate's own SSE) sees it too.
        assert restored["event"] == "branch" and restored["leaf_message_id"] == before[1]["message_id"]
        assert done["event"] == "done" and done["reason"] == "cancelled" and "message_id" not in done
    assert history(api, headers, cid) == before


def test_export_has_every_branch_and_markdown_the_active_one(api: Api) -> None:
    headers, cid = new_chat(api)
    chat(api, headers, cid, "#fake tokens=1\nold question")
    first = history(api, headers, cid)
    edit(api, headers, cid, first[0]["message_id"], "#fake tokens=2\nnew question")
    shown = history(api, headers, cid)
    document = api.http.get(f"/api/conversations/export/{cid}", headers=headers).json()
    assert [(m["content"], m["parent_id"]) for m in document["messages"]] == [
        ("#fake tokens=1\nold question", None), ("t0 ", first[0]["message_id"]),
        ("#fake tokens=2\nnew question", None), ("t0 t1 ", shown[0]["message_id"])]
    assert document["active_leaf_id"] == shown[1]["message_id"]
    markdown = api.http.get(f"/api/conversations/export/{cid}", params={"format": "markdown"}, headers=headers).text
    assert "new question" in markdown and "old question" not in markdown


# -- two processes sharing Redis (and its history cache) -----------------------------------

@pytest.fixture
def pair(database: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a, b = start_pair(database, upstream, tmp_path, redis_url())
    yield a, b
    a.stop(), b.stop()


def test_branches_across_two_processes_keep_history_and_cache_right(pair, upstream: FakeUpstream) -> None:
    a, b = pair
    api_a, api_b = Api(a.url), Api(b.url)
    headers, cid = new_chat(api_a)
    tag = uuid.uuid4().hex[:6]
    chat(api_a, headers, cid, f"#fake tokens=1\n{tag} v1")
    v1 = history(api_a, headers, cid)
    assert history(api_b, headers, cid) == v1  # both read (and cache) it
    with Socket(a.url, cid, headers) as on_a:
        assert on_a.recv()["event"] == "ready"
        edited = edit(api_b, headers, cid, v1[0]["message_id"], f"#fake tokens=2\n{tag} v2")
        assert on_a.recv_until("full_response") == edited
        v2 = history(api_a, headers, cid)
        assert contents(v2) == [f"#fake tokens=2\n{tag} v2", "t0 t1 "] and history(api_b, headers, cid) == v2
        switched = switch(api_b, headers, cid, {"message_id": v1[0]["message_id"]})
        assert switched.status_code == 200
        event = on_a.recv()
        assert event["event"] == "branch" and event["leaf_message_id"] == v1[1]["message_id"]
        for api in (api_a, api_b):  # neither serves the branch it cached before
            assert contents(history(api, headers, cid)) == contents(v1)
        on_a.send({"type": "branch", "message_id": v2[0]["message_id"]})
        assert on_a.recv()["event"] == "branch"
        deadline = time.monotonic() + 5
        while contents(history(api_b, headers, cid)) != contents(v2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert history(api_b, headers, cid) == history(api_a, headers, cid) == v2
        on_a.send({"type": "regenerate"})
        on_a.recv_until("full_response")
        answers = history(api_b, headers, cid)[1]["sibling_ids"]
        assert answers[0] == v2[1]["message_id"] and len(answers) == 2
        assert history(api_a, headers, cid) == history(api_b, headers, cid)


def test_update_and_regenerate_use_the_active_branch(api: Api, upstream: FakeUpstream) -> None:
    """Regenerate answers the last user message of the branch shown, whatever the newest message is."""
    headers, cid = new_chat(api)
    tag = uuid.uuid4().hex[:6]
    chat(api, headers, cid, f"#fake tokens=1\n{tag} a")
    first = history(api, headers, cid)
    edit(api, headers, cid, first[0]["message_id"], f"#fake tokens=2\n{tag} b")
    switch(api, headers, cid, {"message_id": first[0]["message_id"]})
    assert update(api, headers, cid, {"system_prompt": "Answer in French."}).status_code == 200
    assert regenerate(api, headers, cid).status_code == 200
    shown = history(api, headers, cid)
    assert shown[0] == {**first[0], "sibling_ids": shown[0]["sibling_ids"]}
    assert shown[1]["sibling_ids"] == [first[1]["message_id"], shown[1]["message_id"]]
    assert prompt_of(upstream, f"#fake tokens=1\n{tag} a") == [f"#fake tokens=1\n{tag} a"]
