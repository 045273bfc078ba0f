"""Stream tickets (DESIGN.md, Programmatic and shared access): single use, a minute,
bound to the user's token and one conversation; on SSE and the WebSocket, in every process."""
from __future__ import annotations

import threading
from typing import Any

import httpx

from tests.conftest import Api
from tests.servers import ServerProcess
from tests.sse import iter_frames
from tests.test_chat import chat_events, new_chat
from tests.test_sessions import processes  # noqa: F401  (the fixture, reused)
from tests.wsclient import Socket


def ticket(api: Api, headers: dict[str, str], cid: Any) -> httpx.Response:
    return api.http.post("/api/tickets", headers=headers, json={"conversation_id": cid})


def test_a_ticket_opens_one_stream_of_its_conversation_once(api: Api) -> None:
    headers, cid = new_chat(api)
    issued = ticket(api, headers, cid)
    assert issued.status_code == 200 and issued.json()["expires_in"] == 60
    value = issued.json()["ticket"]
    seen: list[dict[str, Any]] = []
    opened = threading.Event()

    def watch() -> None:  # no Authorization header: the ticket alone
        with httpx.Client(base_url=str(api.http.base_url), timeout=30) as client:
            with client.stream("GET", f"/api/chat/{cid}/events", params={"ticket": value}) as response:
                assert response.status_code == 200
                opened.set()
                for event in iter_frames(response.iter_lines()):
                    if event is not None:
                        seen.append(event)
                        if event["event"] == "full_response":
                            return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert opened.wait(10)
    answer = chat_events(api, headers, cid, "#fake tokens=3")
    watcher.join(15)
    assert [e for e in seen if e["event"] != "user_message"] == [e for e in answer if e["event"] != "user_message"]
    again = api.http.get(f"/api/chat/{cid}/events", params={"ticket": value})
    assert again.status_code == 401  # used once already


def test_tickets_are_bound_to_their_conversation_and_token(api: Api) -> None:
    headers, cid = new_chat(api)
    other_cid = api.create_conversation(headers, model="fake-model")["conversation_id"]
    value = ticket(api, headers, cid).json()["ticket"]
    assert api.http.get(f"/api/chat/{other_cid}/events", params={"ticket": value}).status_code == 401
    assert api.http.get(f"/api/chat/{cid}/events", params={"ticket": "tkt_made_up"}).status_code == 401
    assert api.http.get(f"/api/chat/{cid}/events", params={"ticket": "x" * 5000}).status_code == 401
    stranger = api.new_user()
    assert ticket(api, stranger, cid).status_code == 404  # someone else's conversation
    assert ticket(api, {}, cid).status_code == 401
    for bad in (None, 0, -1, 2**60, [cid], "x", 1.5):
        assert ticket(api, headers, bad).status_code == 400, bad
    # A ticket stands for the token that asked for it: logged out, it is worth nothing.
    value = ticket(api, headers, cid).json()["ticket"]
    assert api.http.post("/api/users/logout", headers=headers).status_code == 200
    assert api.http.get(f"/api/chat/{cid}/events", params={"ticket": value}).status_code == 401


def test_a_ticket_opens_a_websocket_once(api: Api) -> None:
    headers, cid = new_chat(api)
    value = ticket(api, headers, cid).json()["ticket"]
    with Socket(str(api.http.base_url), cid, query=f"ticket={value}&last_event_id=0") as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "#fake tokens=2"})
        assert socket.recv_until("full_response")[-1]["data"] == "t0 t1 "
    with Socket(str(api.http.base_url), cid, query=f"ticket={value}") as reused:
        assert reused.close_code() == 4401


def test_a_ticket_from_one_process_opens_a_stream_on_the_other(processes: list[ServerProcess]) -> None:  # noqa: F811
    a, b = Api(processes[0].url), Api(processes[-1].url)
    headers, cid = new_chat(a)
    value = ticket(a, headers, cid).json()["ticket"]
    with Socket(processes[-1].url, cid, query=f"ticket={value}") as on_b:
        assert on_b.recv()["event"] == "ready"
    assert b.http.get(f"/api/chat/{cid}/events", params={"ticket": value}).status_code == 401
