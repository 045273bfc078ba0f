"""Reasoning models (DESIGN.md "Reasoning models and generation settings"), through the real
server and the fake upstream, on every database and broker: the model's thinking streams as
`reasoning` events in each of its three forms, is kept with the answer, and comes back in
history, export and `done`; a conversation's generation settings reach the upstream."""
from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import Api
from tests.fake_upstream import FakeUpstream
from tests.sse import parse_stream
from tests.test_chat import _wait_running, chat, chat_events, history, new_chat
from tests.wsclient import Socket, masked_frame, raw_handshake


def texts(events: list[dict[str, Any]], kind: str) -> str:
    return "".join(e["data"] for e in events if e["event"] == kind)


def assert_thought_and_answered(events: list[dict[str, Any]], thinking: str, answer: str) -> dict[str, Any]:
    """The answer's events in order: reasoning and message deltas, done, full_response."""
    types = [e["event"] for e in events]
    assert types[0] == "user_message" and types[-2:] == ["done", "full_response"], types
    assert set(types[1:-2]) <= {"reasoning", "message"}
    assert texts(events, "reasoning") == thinking
    assert texts(events, "message") == answer == events[-1]["data"]  # full_response: the answer alone
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))
    done = events[-2]
    assert done["reasoning"] == thinking
    return done


THINKING = "r0 r1 r2 r3 "
ANSWER = "t0 t1 t2 "


@pytest.mark.parametrize(("model", "directive"), [
    ("fake-model", "#fake think=4 tokens=3"),  # delta.reasoning_content
    ("fake-model", "#fake think=4 tokens=3 think_field=reasoning"),  # delta.reasoning
    ("raw-model", "#fake think=4 tokens=3 think_field=tags"),  # <think> in content, tags cut mid-word
])
def test_each_form_of_thinking_streams_as_reasoning_and_is_kept(api: Api, model: str, directive: str) -> None:
    headers, cid = new_chat(api, model=model)
    events = chat_events(api, headers, cid, directive)
    done = assert_thought_and_answered(events, THINKING, ANSWER)
    assert done["reason"] == "stop"
    answer = history(api, headers, cid)[-1]
    assert answer["role"] == "assistant" and answer["content"] == ANSWER and answer["reasoning"] == THINKING
    assert "reasoning" not in history(api, headers, cid)[0]  # the user's message has none


def test_a_tag_split_over_chunks_is_not_shown_as_answer_text(api: Api, upstream: FakeUpstream) -> None:
    """The fake cuts `<think>` and `</think>` across chunks ("<thi", "nk>r"); without
    think_tags the same stream is answer text, tags and all."""
    headers, cid = new_chat(api, model="raw-model")
    events = chat_events(api, headers, cid, "#fake think=2 tokens=1 think_field=tags")
    assert "<" not in texts(events, "message") and texts(events, "reasoning") == "r0 r1 "
    headers, plain = new_chat(api, model="fake-model")
    events = chat_events(api, headers, plain, "#fake think=2 tokens=1 think_field=tags")
    assert texts(events, "message") == "<think>r0 r1 </think>\n\nt0 " and texts(events, "reasoning") == ""


def test_interleaved_thinking_and_answer(api: Api) -> None:
    headers, cid = new_chat(api)
    events = chat_events(api, headers, cid, "#fake think=1 tokens=4 interleave=1")
    kinds = [e["event"] for e in events if e["event"] in ("reasoning", "message")]
    turns = [kind for i, kind in enumerate(kinds) if i == 0 or kinds[i - 1] != kind]
    assert turns == ["reasoning", "message", "reasoning", "message", "reasoning"]
    assert_thought_and_answered(events, "r0 more1 more3 ", "t0 t1 t2 t3 ")


def test_finish_reasons_and_reasoning_tokens(api: Api) -> None:
    headers, cid = new_chat(api)
    events = chat_events(api, headers, cid, "#fake think=2 tokens=2 finish=length usage=10,40 reasoning_tokens=25")
    done = assert_thought_and_answered(events, "r0 r1 ", "t0 t1 ")
    assert done["reason"] == "length"
    assert done["usage"] == {"prompt_tokens": 10, "completion_tokens": 40, "estimated": False, "reasoning_tokens": 25}
    assert history(api, headers, cid)[-1]["usage"]["reasoning_tokens"] == 25
    events = chat_events(api, headers, cid, "#fake tokens=1 finish=content_filter")
    assert events[-2]["reason"] == "content_filter" and events[-2]["reasoning"] == ""


def test_stop_while_thinking_keeps_the_thinking(api: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(api)
    result: dict[str, Any] = {}

    def run() -> None:
        result["events"] = chat_events(api, headers, cid, "#fake think=200 delay_ms=20 tokens=5")

    thread = threading.Thread(target=run)
    thread.start()
    _wait_running(api, headers, cid)
    time.sleep(0.5)
    assert api.http.post(f"/api/chat/{cid}/stop", headers=headers).json()["stopped"] is True
    thread.join(15)
    events = result["events"]
    done = events[-2]
    assert done["event"] == "done" and done["reason"] == "cancelled"
    thought = texts(events, "reasoning")
    assert thought.startswith("r0 r1 ") and done["reasoning"] == thought and texts(events, "message") == ""
    saved = history(api, headers, cid)[-1]
    assert saved["role"] == "assistant" and saved["reasoning"] == thought and saved["content"] == ""
    assert upstream.request_for("#fake think=200 delay_ms=20 tokens=5").closed_early


def test_resume_in_the_middle_of_thinking_has_no_gap_and_no_duplicate(api: Api) -> None:
    headers, cid = new_chat(api)
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def run() -> None:
        seen.extend(chat_events(api, headers, cid, "#fake think=30 delay_ms=15 tokens=3"))
        done.set()

    thread = threading.Thread(target=run)
    with Socket(str(api.http.base_url).rstrip("/"), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"  # subscribed: the answer starts after, not before
        thread.start()
        first = [socket.recv() for _ in range(4)]  # user_message and some thinking
    assert any(e["event"] == "reasoning" for e in first)
    with api.http.stream("GET", f"/api/chat/{cid}/events", headers={**headers, "Last-Event-ID": str(first[-1]["id"])},
                         timeout=20) as response:
        rest: list[dict[str, Any]] = []
        raw = b""
        for chunk in response.iter_raw():
            raw += chunk
            if b"event: full_response" in raw and raw.endswith(b"\n\n"):
                break
        rest = parse_stream(raw)
    thread.join(15)
    assert done.is_set()
    resumed = [*first, *rest]
    # Exactly what the POST stream saw from the socket's first event on.
    assert [e["id"] for e in resumed] == [e["id"] for e in seen if e["id"] >= first[0]["id"]]
    assert texts(resumed, "reasoning") == texts([e for e in seen if e["id"] >= first[0]["id"]], "reasoning")
    assert texts(seen, "reasoning") == "".join(f"r{i} " for i in range(30))


def test_earlier_thinking_goes_upstream_only_where_the_provider_asks(api: Api, upstream: FakeUpstream) -> None:
    for model, sent in (("fake-model", False), ("raw-model", True)):
        headers, cid = new_chat(api, model=model)
        chat_events(api, headers, cid, "#fake think=2 tokens=1 think_field=tags" if sent else "#fake think=2 tokens=1")
        chat_events(api, headers, cid, f"second turn {model}")
        earlier = upstream.request_for(f"second turn {model}").body["messages"][-2]
        assert earlier["role"] == "assistant"
        assert earlier.get("reasoning_content") == ("r0 r1 " if sent else None)


def test_the_demo_think_model_thinks_offline(api: Api) -> None:
    headers, cid = new_chat(api, model="demo-think")
    events = chat_events(api, headers, cid, "hello there")
    thinking = texts(events, "reasoning")
    assert thinking.startswith("The user wrote 2 word(s).")
    assert_thought_and_answered(events, thinking, texts(events, "message"))
    assert texts(events, "message").startswith('You said: "hello there"')
    headers, cid = new_chat(api, model="demo-think", params={"max_tokens": 3})
    events = chat_events(api, headers, cid, "hello")
    assert events[-2]["reason"] == "length" and texts(events, "message") == ""


def test_export_carries_the_thinking(api: Api) -> None:
    headers, cid = new_chat(api)
    chat_events(api, headers, cid, "#fake think=2 tokens=1")
    document = api.http.get(f"/api/conversations/export/{cid}", headers=headers).json()
    assert document["messages"][-1]["reasoning"] == "r0 r1 "
    markdown = api.http.get(f"/api/conversations/export/{cid}?format=markdown", headers=headers).text
    assert "<details>\n<summary>Thinking</summary>\n\nr0 r1 \n\n</details>\n\nt0 " in markdown


def test_params_are_kept_sent_only_when_set_and_cleared_by_null(api: Api, upstream: FakeUpstream) -> None:
    headers = api.new_user()
    created = api.create_conversation(headers, model="fake-model", params={"temperature": 0.2, "reasoning_effort": "high"})
    cid = created["conversation_id"]
    assert created["params"] == {"reasoning_effort": "high", "temperature": 0.2}
    chat_events(api, headers, cid, "with params")
    body = upstream.request_for("with params").body
    assert body["temperature"] == 0.2 and body["reasoning_effort"] == "high"
    assert "top_p" not in body and "max_tokens" not in body
    updated = api.http.post(f"/api/conversations/update/{cid}", headers=headers,
                            json={"params": {"temperature": None, "top_p": 0.5, "max_tokens": 100}}).json()
    assert updated["params"] == {"max_tokens": 100, "reasoning_effort": "high", "top_p": 0.5}
    response = api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()
    assert response["params"] == updated["params"]
    chat_events(api, headers, cid, "after update")
    body = upstream.request_for("after update").body
    assert "temperature" not in body and body["top_p"] == 0.5 and body["max_tokens"] == 100
    stranger = api.new_user()  # someone else's conversation: as if it did not exist, and unchanged
    response = api.http.post(f"/api/conversations/update/{cid}", headers=stranger, json={"params": {"top_p": 0.1}})
    assert response.status_code == 404
    assert api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["params"] == updated["params"]
    headers, plain = new_chat(api)
    assert api.http.get(f"/api/conversations/history/{plain}", headers=headers).json()["params"] == {}


BAD_PARAMS = [{"temperature": 2.5}, {"temperature": -0.1}, {"temperature": "hot"}, {"top_p": 1.01},
              {"max_tokens": 0}, {"max_tokens": 1_000_001}, {"max_tokens": 1.5}, {"max_tokens": True},
              {"reasoning_effort": "extreme"}, {"reasoning_effort": 3}, {"seed": 1}, "warm", [1], 7]


@pytest.mark.parametrize("params", BAD_PARAMS)
def test_bad_params_are_400_and_change_nothing(api: Api, params: Any) -> None:
    headers = api.new_user()
    response = api.http.post("/api/conversations/create", headers=headers, json={"params": params})
    assert response.status_code == 400, response.text
    cid = api.create_conversation(headers, params={"temperature": 1})["conversation_id"]
    response = api.http.post(f"/api/conversations/update/{cid}", headers=headers, json={"params": params})
    assert response.status_code == 400, response.text
    assert api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["params"] == {"temperature": 1}


def test_a_silent_upstream_is_kept_alive_before_its_first_token(api: Api) -> None:
    """Keep-alive (1 s in the tests) from the first second: while the model thinks
    silently, the stream gets comment lines before anything else arrives."""
    headers, cid = new_chat(api)
    started = time.monotonic()
    with api.http.stream("POST", f"/api/chat/{cid}", headers=headers,
                         json={"message": "#fake think=1 delay_ms=2600 tokens=1"}) as response:
        assert response.status_code == 200
        lines = []
        for line in response.iter_lines():
            lines.append((time.monotonic() - started, line))
            if line.startswith("event: full_response"):
                break
    first_reasoning = next(t for t, line in lines if line == "event: reasoning")
    pings = [t for t, line in lines if line == ": ping" and t < first_reasoning]
    assert first_reasoning > 2.5 and len(pings) >= 2, lines


def test_an_upstream_slow_to_answer_still_gets_a_stream_and_a_late_refusal_is_an_error_event(api: Api) -> None:
    """The POST answers once the upstream accepts, or after a second at most, starting
    with a keep-alive comment: an upstream that takes 2.5 s to send its headers does not
    leave the client without a byte."""
    headers, cid = new_chat(api)
    started = time.monotonic()
    with api.http.stream("POST", f"/api/chat/{cid}", headers=headers,
                         json={"message": "#fake head_delay_ms=2500 tokens=2"}) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        first = next(chunks)
        assert first.startswith(b": ping\n\n") and time.monotonic() - started < 2.0
        events = parse_stream(first + b"".join(chunks))
    assert texts(events, "message") == "t0 t1 " and events[-1]["event"] == "full_response"
    with api.http.stream("POST", f"/api/chat/{cid}", headers=headers,
                         json={"message": "#fake head_delay_ms=2500 status=429"}) as response:
        assert response.status_code == 200
        events = parse_stream(response.read())
    assert events[-1]["event"] == "error" and "429" in events[-1]["data"]
    assert chat(api, headers, cid, "#fake status=429").status_code == 502  # a refusal in time: a plain 502


def test_events_over_websocket_too(api: Api) -> None:
    headers, cid = new_chat(api)
    with Socket(str(api.http.base_url).rstrip("/"), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake think=3 tokens=2"})
        events = socket.recv_until("full_response")
    assert_thought_and_answered(events, "r0 r1 r2 ", "t0 t1 ")


def test_a_socket_gets_protocol_pings_while_the_model_is_silent(api: Api) -> None:
    """WebSocket keep-alive is protocol-level pings (never JSON frames), every keep-alive
    period (1 s in the tests) from the start, also before the model's first token. Read
    with a raw client, which sees the ping frames a library would answer unseen."""
    import struct

    headers, cid = new_chat(api)
    raw, buffer = raw_handshake(httpx.URL(str(api.http.base_url)).port or 80, cid, headers["Authorization"])

    def read(size: int) -> bytes:
        nonlocal buffer
        while len(buffer) < size:
            buffer += raw.recv(65536)
        taken, buffer = buffer[:size], buffer[size:]
        return taken

    def frame() -> tuple[int, bytes]:
        first, second = read(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", read(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", read(8))[0]
        return first & 0x0F, read(size)

    started = time.monotonic()
    sender = threading.Thread(target=chat, args=(api, headers, cid, "#fake think=1 delay_ms=2600 tokens=1"))
    sender.start()
    seen: list[tuple[float, int, bytes]] = []
    while time.monotonic() - started < 15:
        opcode, payload = frame()
        seen.append((time.monotonic() - started, opcode, payload))
        if opcode == 0x9:  # answered, or the server would close the socket
            raw.sendall(masked_frame(0xA, payload))
        if opcode == 0x1 and b'"event":"full_response"' in payload:
            break
    sender.join(10)
    raw.close()
    first_thought = next(t for t, opcode, payload in seen if opcode == 0x1 and b'"event":"reasoning"' in payload)
    pings = [t for t, opcode, _ in seen if opcode == 0x9 and t < first_thought]
    assert first_thought > 2.5 and len(pings) >= 2, seen
    assert all(b'"event":"ping"' not in payload for _, _, payload in seen)  # no JSON keep-alive frames
