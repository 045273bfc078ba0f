"""Streaming chat through the real server and a real fake upstream: SSE, stop, resume, failures."""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import httpx_sse
import pytest

from realtime_llm.providers.base import ChatMessage, ChatRequest
from realtime_llm.providers.demo import demo_reply
from tests.conftest import PROVIDER_KEY, Api
from tests.fake_upstream import FakeUpstream
from tests.sse import http_chunks, iter_frames, parse_stream


def chat(api: Api, headers: dict[str, str], cid: int, message: str) -> httpx.Response:
    return api.http.post(f"/api/chat/{cid}", json={"message": message}, headers=headers)


def chat_events(api: Api, headers: dict[str, str], cid: int, message: str) -> list[dict[str, Any]]:
    response = chat(api, headers, cid, message)
    assert response.status_code == 200, response.text
    return parse_stream(response.content)


def history(api: Api, headers: dict[str, str], cid: int) -> list[dict[str, Any]]:
    response = api.http.get(f"/api/conversations/history/{cid}", headers=headers)
    assert response.status_code == 200
    return list(response.json()["messages"])


def new_chat(api: Api, **body: Any) -> tuple[dict[str, str], int]:
    headers = api.new_user()
    body.setdefault("model", "fake-model")
    return headers, api.create_conversation(headers, **body)["conversation_id"]


def assert_complete(events: list[dict[str, Any]], cid: int) -> str:
    """The DESIGN.md sequence: user_message, message*, done, full_response; ids increasing."""
    types = [e["event"] for e in events]
    assert types[0] == "user_message"
    assert types[-2:] == ["done", "full_response"], events[-1]
    assert set(types[1:-2]) <= {"message"}
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e["conversation_id"] == cid for e in events)
    full = events[-1]["data"]
    assert full == "".join(e["data"] for e in events if e["event"] == "message")
    return str(full)


def test_events_at_hand_together_go_out_in_one_write(api: Api, broker: str) -> None:
    """Each chunk of the response is one write to the socket. The answer's last events,
    published one after the other, go in one, which also ends the response; with Redis
    each publish is a round trip, so they may come a write apart."""
    headers, cid = new_chat(api)
    chunks = http_chunks(str(api.http.base_url).rstrip("/"), f"/api/chat/{cid}", headers,
                         {"message": "#fake tokens=3\nhello"})
    assert_complete(parse_stream(b"".join(chunks)), cid)
    last = [e["event"] for e in parse_stream(chunks[-1])]
    assert last[-1] == "full_response"
    if broker == "memory":
        assert last[-2:] == ["done", "full_response"], chunks


def test_a_replay_is_joined_in_chunks_of_bounded_size(api: Api) -> None:
    """A resume's backlog goes out joined, but a chunk holds at most 64 KiB before its last
    event (chat.JOINED_BYTES): a reader takes from its subscription no faster than its
    connection takes the bytes, not the whole buffer at once."""
    headers, cid = new_chat(api)
    events = chat_events(api, headers, cid, "#fake tokens=300 size=400 delay_ms=2")
    chunks = http_chunks(str(api.http.base_url).rstrip("/"), f"/api/chat/{cid}/events?last_event_id={events[0]['id']}",
                         headers, until=b"event: full_response")
    assert [e["id"] for e in parse_stream(b"".join(chunks))] == [e["id"] for e in events[1:]]
    assert len(chunks) > 1
    for chunk in chunks:
        frames = chunk.split(b"\n\n")[:-1]
        assert len(frames) == 1 or len(chunk) - len(frames[-1]) - 2 < 64 * 1024, [len(f) for f in frames]


def test_event_sequence_framing_and_headers(api: Api, upstream: FakeUpstream) -> None:
    """A chat streams the full sequence as strict SSE frames with no-buffering headers."""
    headers, cid = new_chat(api)
    response = chat(api, headers, cid, "#fake tokens=6\nhello")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = parse_stream(response.content)
    full = assert_complete(events, cid)
    assert full == "".join(f"t{i} " for i in range(6))
    assert events[0]["data"] == "#fake tokens=6\nhello" and events[0]["message_id"] == 1
    assert events[-2]["reason"] == "stop" and events[-2]["data"] == "Stream finished"
    assert events[-2]["message_id"] == events[-1]["message_id"] == 2


def test_httpx_sse_reads_typed_events(api: Api) -> None:
    """An off-the-shelf SSE client sees the same typed events and ids."""
    headers, cid = new_chat(api)
    with httpx_sse.connect_sse(api.http, "POST", f"/api/chat/{cid}", json={"message": "#fake tokens=3"},
                               headers=headers) as source:
        seen = [(sse.event, int(sse.id), sse.json()) for sse in source.iter_sse()]
    assert [s[0] for s in seen] == ["user_message", "message", "message", "message", "done", "full_response"]
    assert all(payload["id"] == event_id and payload["event"] == name for name, event_id, payload in seen)
    with httpx_sse.connect_sse(api.http, "POST", f"/api/chat/{cid}", json={"message": "#fake echo=1\n" + AWKWARD},
                               headers=headers) as source:
        events = [sse.json() for sse in source.iter_sse()]
    assert events[-1]["event"] == "full_response" and events[-1]["data"] == AWKWARD


AWKWARD = 'quote " backslash \\ newline \n crlf \r\n tab \t emoji 🦜 line-sep \u2028 para \u2029 nel \x85 ctl \x01 </script>'


def test_awkward_text_round_trips(api: Api) -> None:
    """Quotes, backslashes, newlines, CR, emoji and U+2028 survive SSE framing and storage."""
    headers, cid = new_chat(api)
    events = chat_events(api, headers, cid, "#fake echo=1\n" + AWKWARD)
    assert assert_complete(events, cid) == AWKWARD
    assert history(api, headers, cid)[-1]["content"] == AWKWARD


def test_history_after_each_turn(api: Api) -> None:
    """Each turn adds the user message and the answer, with message ids counting up."""
    headers, cid = new_chat(api)
    chat_events(api, headers, cid, "#fake tokens=2\nfirst")
    chat_events(api, headers, cid, "#fake tokens=3\nsecond")
    messages = history(api, headers, cid)
    assert [(m["role"], m["message_id"]) for m in messages] == [("user", 1), ("assistant", 2), ("user", 3), ("assistant", 4)]
    assert messages[1]["content"] == "t0 t1 " and messages[3]["content"] == "t0 t1 t2 "


def test_answers_reuse_the_upstream_connection(api: Api, upstream: FakeUpstream) -> None:
    """The body's end after [DONE] is read, so the connection goes back to the pool: left
    unread, it was closed and every answer paid a new connection to the upstream."""
    headers, cid = new_chat(api)
    ports = []
    for turn in range(3):
        chat_events(api, headers, cid, f"#fake tokens=2\nturn {turn}")
        ports.append(upstream.received[-1].client_port)
    assert ports[0] == ports[1] == ports[2] != 0


def test_upstream_that_keeps_the_stream_open_after_done(api: Api) -> None:
    """The body's end is awaited only briefly after [DONE]: an upstream that never ends it
    neither holds the answer back nor fails it (the read timeout here is 3 s)."""
    headers, cid = new_chat(api)
    began = time.monotonic()
    events = chat_events(api, headers, cid, "#fake tokens=3 hang_after_done=1\nhello")
    assert time.monotonic() - began < 2.5  # not held until the read timeout ended the drain
    assert assert_complete(events, cid) == "t0 t1 t2 "
    assert [m["content"] for m in history(api, headers, cid)] == ["#fake tokens=3 hang_after_done=1\nhello", "t0 t1 t2 "]


def test_upstream_receives_prompt_history_and_key(api: Api, upstream: FakeUpstream) -> None:
    """The upstream gets the system prompt first, then history, streaming on, with the right key."""
    headers, cid = new_chat(api, system_prompt="You are terse.")
    chat_events(api, headers, cid, "#fake tokens=1\none")
    chat_events(api, headers, cid, "#fake tokens=1\ntwo")
    body = upstream.request_for("#fake tokens=1\ntwo").body
    assert body["stream"] is True and body["model"] == "fake-model"
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "#fake tokens=1\none"},
        {"role": "assistant", "content": "t0 "},
        {"role": "user", "content": "#fake tokens=1\ntwo"},
    ]
    assert upstream.request_for("#fake tokens=1\ntwo").headers["authorization"] == f"Bearer {PROVIDER_KEY}"

    own_key = "sk-conversation-own-key-1234"
    headers, cid = new_chat(api, api_key=own_key)
    chat_events(api, headers, cid, "#fake tokens=1")
    assert upstream.received[-1].headers["authorization"] == f"Bearer {own_key}"
    assert upstream.received[-1].body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}


def _slow_chat_in_background(api: Api, headers: dict[str, str], cid: int, message: str) -> dict[str, Any]:
    """Start a chat on another thread; returns a dict that gets its events when it ends."""
    result: dict[str, Any] = {}

    def run() -> None:
        with httpx.Client(base_url=str(api.http.base_url), timeout=30) as client:
            response = client.post(f"/api/chat/{cid}", json={"message": message}, headers=headers)
            result["status"] = response.status_code
            result["events"] = parse_stream(response.content) if response.status_code == 200 else response.json()

    thread = threading.Thread(target=run)
    thread.start()
    result["thread"] = thread
    return result


def _wait_running(api: Api, headers: dict[str, str], cid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(history(api, headers, cid)) % 2 == 1:  # the user message is saved, no answer yet
            return
        time.sleep(0.02)
    raise AssertionError("generation did not start")


def test_second_chat_while_running_is_409(api: Api) -> None:
    """One generation per conversation: a second message while one runs is a 409."""
    headers, cid = new_chat(api)
    running = _slow_chat_in_background(api, headers, cid, "#fake tokens=10 delay_ms=100")
    _wait_running(api, headers, cid)
    response = chat(api, headers, cid, "#fake tokens=1\nimpatient")
    assert response.status_code == 409 and "already running" in response.json()["error"]
    running["thread"].join(15)
    assert running["status"] == 200
    assert_complete(running["events"], cid)
    assert len(history(api, headers, cid)) == 2  # the refused message was not saved


def test_stop_closes_upstream_and_saves_partial(api: Api, upstream: FakeUpstream) -> None:
    """Stop really closes the upstream request, saves the partial answer, ends with done(cancelled)."""
    headers, cid = new_chat(api)
    message = f"#fake tokens=100 delay_ms=50\n{uuid.uuid4()}"
    running = _slow_chat_in_background(api, headers, cid, message)
    record = upstream.request_for(message)
    time.sleep(0.3)
    response = api.http.post(f"/api/chat/{cid}/stop", headers=headers)
    assert response.status_code == 200 and response.json()["stopped"] is True
    running["thread"].join(15)
    events = running["events"]
    partial = assert_complete(events, cid)
    assert events[-2]["reason"] == "cancelled"
    assert 0 < len(partial) < len("".join(f"t{i} " for i in range(100)))
    assert upstream.wait_for(lambda: record.closed_early, 5), "upstream request was not closed"
    assert history(api, headers, cid)[-1] == {**history(api, headers, cid)[-1], "role": "assistant", "content": partial}
    assert api.http.post(f"/api/chat/{cid}/stop", headers=headers).json()["stopped"] is False
    assert_complete(chat_events(api, headers, cid, "#fake tokens=1"), cid)  # usable again


def test_disconnect_does_not_stop_generation(api: Api, upstream: FakeUpstream) -> None:
    """A client that hangs up mid-answer leaves the generation running; the answer is saved."""
    headers, cid = new_chat(api)
    message = f"#fake tokens=15 delay_ms=40\n{uuid.uuid4()}"
    with api.http.stream("POST", f"/api/chat/{cid}", json={"message": message}, headers=headers) as response:
        frames = iter_frames(response.iter_lines())
        assert next(frames)["event"] == "user_message"
        assert next(frames)["event"] == "message"
    record = upstream.request_for(message)
    assert upstream.wait_for(lambda: record.completed, 10)
    deadline = time.monotonic() + 5
    while len(history(api, headers, cid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert history(api, headers, cid)[-1]["content"] == "".join(f"t{i} " for i in range(15))


def test_resume_with_last_event_id(api: Api) -> None:
    """GET /events with Last-Event-ID replays everything after it, then continues live: no gap, no duplicate."""
    headers, cid = new_chat(api)
    running = _slow_chat_in_background(api, headers, cid, "#fake tokens=20 delay_ms=40")
    _wait_running(api, headers, cid)
    time.sleep(0.3)  # some events are out; resume from the first one
    first_id = None
    resumed: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while first_id is None and time.monotonic() < deadline:
        with api.http.stream("GET", f"/api/chat/{cid}/events?last_event_id=0", headers=headers) as response:
            for event in iter_frames(response.iter_lines()):
                if event is not None:
                    first_id = event["id"]
                    break
    with api.http.stream("GET", f"/api/chat/{cid}/events", headers={**headers, "Last-Event-ID": str(first_id)}) as response:
        assert response.status_code == 200
        for event in iter_frames(response.iter_lines()):
            if event is None:
                continue
            resumed.append(event)
            if event["event"] == "full_response":
                break
    running["thread"].join(15)
    original = running["events"]
    assert resumed == [e for e in original if e["id"] > first_id]


def test_events_stream_keeps_alive(api: Api) -> None:
    """An idle events stream gets comment lines, so proxies keep it open."""
    headers, cid = new_chat(api)
    with api.http.stream("GET", f"/api/chat/{cid}/events", headers=headers) as response:
        lines = response.iter_lines()
        assert next(lines) == ": ping"


def test_upstream_refusal_is_502_and_conversation_recovers(api: Api) -> None:
    """An upstream 4xx before streaming is a 502 naming the upstream's reason, never the key."""
    headers, cid = new_chat(api)
    response = chat(api, headers, cid, "#fake status=401")
    assert response.status_code == 502
    error = response.json()["error"]
    assert "fake refusal 401" in error and "401" in error and PROVIDER_KEY not in error
    assert [m["role"] for m in history(api, headers, cid)] == ["user"]
    assert response.headers["content-type"].startswith("application/json")
    assert_complete(chat_events(api, headers, cid, "#fake tokens=2"), cid)


@pytest.mark.parametrize(
    "directive, words",
    [
        ("drop_after=3", "closed"),
        ("malformed_after=2", "malformed"),
        ("error_after=2", "fake in-stream failure"),
        ("no_finish=1", "ended before"),
        ("hang=1", "timed out"),
    ],
)
def test_midstream_failures_end_with_error(api: Api, directive: str, words: str) -> None:
    """A stream that breaks, lies or stalls ends with an `error` event, no `done`; the user message stays."""
    headers, cid = new_chat(api)
    events = chat_events(api, headers, cid, f"#fake tokens=6 {directive}")
    assert events[0]["event"] == "user_message"
    assert events[-1]["event"] == "error" and words in events[-1]["data"]
    assert "done" not in [e["event"] for e in events]
    assert [m["role"] for m in history(api, headers, cid)] == ["user"]
    assert_complete(chat_events(api, headers, cid, "#fake tokens=1"), cid)


def test_unreachable_upstream_is_502(api: Api) -> None:
    headers, cid = new_chat(api, model="dead-model")
    response = chat(api, headers, cid, "hello?")
    assert response.status_code == 502 and "could not reach" in response.json()["error"]


def test_demo_model_streams_offline(api: Api) -> None:
    """The default demo model answers deterministically, built from the prompt."""
    headers = api.new_user()
    cid = api.create_conversation(headers)["conversation_id"]
    events = chat_events(api, headers, cid, "What is streaming?")
    full = assert_complete(events, cid)
    expected = demo_reply(ChatRequest("demo", (ChatMessage("system", "x"), ChatMessage("user", "What is streaming?"))))
    assert full == expected
    assert len([e for e in events if e["event"] == "message"]) > 5


@pytest.mark.parametrize(
    "body, status",
    [
        ({"message": ""}, 400),
        ({"message": "   \n"}, 400),
        ({}, 400),
        ({"message": 5}, 400),
        ({"message": None}, 400),
        ({"message": "x" * 32_001}, 413),
    ],
)
def test_chat_bad_input(api: Api, body: dict[str, Any], status: int) -> None:
    headers, cid = new_chat(api)
    response = api.http.post(f"/api/chat/{cid}", json=body, headers=headers)
    assert response.status_code == status, response.text
    assert history(api, headers, cid) == []


def test_chat_routes_on_someone_elses_conversation_are_404(api: Api) -> None:
    """Chat, stop and events on another user's conversation answer like a missing one."""
    _, cid = new_chat(api)
    intruder = api.new_user()
    for method, path, kwargs in (
        ("POST", f"/api/chat/{cid}", {"json": {"message": "hi"}}),
        ("POST", f"/api/chat/{cid}/stop", {}),
        ("GET", f"/api/chat/{cid}/events", {}),
    ):
        theirs = api.http.request(method, path, headers=intruder, **kwargs)
        missing = api.http.request(method, path.replace(str(cid), str(2**52)), headers=intruder, **kwargs)
        assert theirs.status_code == missing.status_code == 404, path
        assert theirs.json() == missing.json()
    for method, path in (("POST", f"/api/chat/{cid}"), ("POST", f"/api/chat/{cid}/stop"), ("GET", f"/api/chat/{cid}/events")):
        assert api.http.request(method, path).status_code == 401


def test_bad_last_event_id_is_400(api: Api) -> None:
    headers, cid = new_chat(api)
    for bad in ("abc", "-1", "1.5", "9" * 30):
        response = api.http.get(f"/api/chat/{cid}/events", headers={**headers, "Last-Event-ID": bad})
        assert response.status_code == 400, bad


def test_delete_mid_generation_stops_it(api: Api, upstream: FakeUpstream) -> None:
    """Deleting a conversation mid-answer closes the upstream and ends its streams."""
    headers, cid = new_chat(api)
    message = f"#fake tokens=100 delay_ms=50\n{uuid.uuid4()}"
    running = _slow_chat_in_background(api, headers, cid, message)
    record = upstream.request_for(message)
    assert api.http.post(f"/api/conversations/del/{cid}", headers=headers).status_code == 200
    running["thread"].join(15)
    assert not running["thread"].is_alive()
    assert running["status"] == 200, running
    assert running["events"][-1]["event"] == "error" and "deleted" in running["events"][-1]["data"]
    assert upstream.wait_for(lambda: record.closed_early, 5)
    assert api.http.get(f"/api/conversations/history/{cid}", headers=headers).status_code == 404


def test_event_ids_keep_increasing_across_generations(api: Api) -> None:
    headers, cid = new_chat(api)
    first = chat_events(api, headers, cid, "#fake tokens=2")
    second = chat_events(api, headers, cid, "#fake tokens=2")
    assert second[0]["id"] > first[-1]["id"]


def test_nul_in_message_is_400(api: Api) -> None:
    headers, cid = new_chat(api)
    response = api.http.post(f"/api/chat/{cid}", json={"message": "a\x00b"}, headers=headers)
    assert response.status_code == 400 and "NUL" in response.json()["error"]


def test_stopped_full_response_equals_the_deltas(api: Api) -> None:
    """Even when a stop lands inside a batch window, full_response is exactly the deltas sent."""
    headers, cid = new_chat(api)
    running = _slow_chat_in_background(api, headers, cid, "#fake tokens=400 delay_ms=2")
    _wait_running(api, headers, cid)
    time.sleep(0.1)
    api.http.post(f"/api/chat/{cid}/stop", headers=headers)
    running["thread"].join(15)
    assert_complete(running["events"], cid)
    assert history(api, headers, cid)[-1]["content"] == running["events"][-1]["data"]


def test_resuming_from_beyond_the_servers_ids_moves_them_past(api: Api) -> None:
    """A client whose last id is ahead of the server (its buffer was lost) gets new ids above it."""
    headers, cid = new_chat(api)
    with api.http.stream("GET", f"/api/chat/{cid}/events", headers={**headers, "Last-Event-ID": "5000"}) as response:
        assert response.status_code == 200
    events = chat_events(api, headers, cid, "#fake tokens=1")
    assert events[0]["id"] > 5000
