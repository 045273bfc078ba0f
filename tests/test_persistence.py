"""Data and tokens survive a restart of the server."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import iter_frames
from tests.test_chat import chat_events, new_chat
from tests.wsclient import Socket


def test_restart_keeps_users_conversations_and_tokens(database: str, tmp_path: Path) -> None:
    """Stop the server, start it again on the same database: the token, the conversation
    (its settings, an answer's thinking), and a logout made before the restart all still hold."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database))
    first = ServerProcess(config, tmp_path).start()
    api = Api(first.url)
    username = api.register()
    token = api.login(username)
    revoked = api.login(username)
    headers = {"Authorization": f"Bearer {token}"}
    created = api.create_conversation(headers, title="keep me", api_key="sk-persist-123456789",
                                      model="demo-think", params={"temperature": 0.5})
    answered = api.http.post(f"/api/chat/{created['conversation_id']}", json={"message": "hi"}, headers=headers)
    assert answered.status_code == 200 and b"event: reasoning" in answered.content
    before = api.http.get(f"/api/conversations/history/{created['conversation_id']}", headers=headers).json()
    assert before["messages"][-1]["reasoning"].startswith("The user wrote 1 word(s).")
    api.http.post("/api/users/logout", headers={"Authorization": f"Bearer {revoked}"})
    assert first.stop() == 0
    api.http.close()

    second = ServerProcess(config, tmp_path).start()
    try:
        api = Api(second.url)
        history = api.http.get(f"/api/conversations/history/{created['conversation_id']}", headers=headers)
        assert history.status_code == 200
        assert history.json()["title"] == "keep me"
        assert history.json()["messages"] == before["messages"] and history.json()["params"] == {"temperature": 0.5}
        assert api.http.get("/api/users/me", headers={"Authorization": f"Bearer {revoked}"}).status_code == 401
        api.login(username)
    finally:
        second.stop()


def watch_answer_until(server: ServerProcess, headers: dict[str, str], cid: int, seen: int) -> int:
    """Start a long answer over a socket and read `seen` of its deltas; the highest id read."""
    with Socket(server.url, cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=500 delay_ms=10"})
        highest, deltas = 0, 0
        while deltas < seen:
            event = socket.recv()
            highest = max(highest, event["id"])
            deltas += event["event"] == "message"
    return highest


def resumed_from(api: Api, headers: dict[str, str], cid: int, after: int, until: int) -> list[int]:
    """The ids a client resuming after `after` receives, up to event `until`."""
    ids: list[int] = []
    with api.http.stream("GET", f"/api/chat/{cid}/events", headers={**headers, "Last-Event-ID": str(after)}) as stream:
        for event in iter_frames(stream.iter_lines()):
            if event is not None:
                ids.append(event["id"])
                if event["id"] >= until:
                    break
    return ids


def assert_resumes_into(resumed: list[int], after: int, turn: list[dict[str, Any]]) -> None:
    """A client resuming from its last id gets only newer ids, in order, the whole next
    turn among them (after the end of an interrupted one, if it went on)."""
    assert all(i > after for i in resumed) and resumed == sorted(set(resumed)), resumed
    assert resumed[-len(turn):] == [e["id"] for e in turn]


def test_event_ids_stay_above_what_clients_saw_after_a_crash(database: str, upstream: FakeUpstream,
                                                               tmp_path: Path) -> None:
    """kill -9 of the server (in-process broker) mid-answer: after the restart the next
    turn's ids are above every id a client saw, so one resuming from its last id gets it."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database, upstream))
    server = ServerProcess(config, tmp_path).start()
    api = Api(server.url)
    headers, cid = new_chat(api)
    assert chat_events(api, headers, cid, "#fake tokens=3")[-1]["event"] == "full_response"
    highest = watch_answer_until(server, headers, cid, seen=60)
    server.stop(signal.SIGKILL)

    server = ServerProcess(config, tmp_path).start()
    try:
        api = Api(server.url)
        events = chat_events(api, headers, cid, "#fake tokens=3")
        assert events[0]["id"] > highest, (events[0]["id"], highest)
        assert_resumes_into(resumed_from(api, headers, cid, highest, events[-1]["id"]), highest, events)
    finally:
        server.stop()
