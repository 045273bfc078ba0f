"""Share links (DESIGN.md, Programmatic and shared access): anyone with the link reads the
history and watches the conversation live, read-only, until it is unshared — in every
process."""
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


def share(api: Api, headers: dict[str, str], cid: Any) -> httpx.Response:
    return api.http.post(f"/api/conversations/share/{cid}", headers=headers)


def viewer_url(base: str, share_id: str) -> str:
    return base.replace("http://", "ws://") + f"/ws/shared/{share_id}"


class SharedSocket(Socket):
    """A viewer's socket: no authentication."""

    def __init__(self, base_url: str, share_id: str, query: str = "") -> None:
        super().__init__(base_url, 0)  # replaced below: the shared path, not a conversation's
        self.close()
        from websockets.sync.client import connect
        url = viewer_url(base_url, share_id) + (f"?{query}" if query else "")
        self._connecting = connect(url, open_timeout=10, max_size=None, compression=None, close_timeout=2)
        self.conn = self._connecting.__enter__()


def test_share_history_and_a_live_read_only_view(api: Api) -> None:
    headers = api.new_user()
    cid = api.create_conversation(headers, model="fake-model", system_prompt="Secret instructions",
                                  api_key="sk-owner-secret-9999")["conversation_id"]
    chat_events(api, headers, cid, "#fake tokens=2\nfirst")
    made = share(api, headers, cid)
    assert made.status_code == 200
    share_id = made.json()["share_id"]
    assert made.json()["url"] == f"/s/{share_id}"
    assert share(api, headers, cid).json()["share_id"] == share_id  # sharing again: the same link
    shown = httpx.get(f"{api.http.base_url}/api/shared/{share_id}")  # no login
    assert shown.status_code == 200
    body = shown.text
    assert "Secret instructions" not in body and "sk-" not in body and "9999" not in body
    assert [m["content"] for m in shown.json()["messages"]] == ["#fake tokens=2\nfirst", "t0 t1 "]
    page = httpx.get(f"{api.http.base_url}/s/{share_id}")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]

    with SharedSocket(str(api.http.base_url), share_id) as viewer:
        assert viewer.recv()["event"] == "ready"  # at once, no auth frame
        answer = chat_events(api, headers, cid, "#fake tokens=3\nsecond")
        seen = viewer.recv_until("full_response")
        assert seen == answer
        for frame in ({"type": "message", "content": "hi"}, {"type": "stop"}, {"type": "regenerate"},
                      {"type": "branch", "message_id": 1}):
            viewer.send(frame)
            refused = viewer.recv()
            assert refused["event"] == "error" and refused["code"] == "forbidden", refused
        viewer.send({"type": "resume", "last_event_id": 0})  # the buffer again: both answers
        replayed = [viewer.recv_until("full_response")[-1]["data"] for _ in range(2)]
        assert replayed == ["t0 t1 ", "t0 t1 t2 "]
        viewer.send({"type": "ping"})
        assert viewer.recv()["event"] == "pong"
        assert api.http.post(f"/api/conversations/unshare/{cid}", headers=headers).status_code == 200
        assert viewer.close_code() == 4404  # open viewers end at once
    assert httpx.get(f"{api.http.base_url}/api/shared/{share_id}").status_code == 404
    assert len(api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()["messages"]) == 4


def test_shares_are_the_owners_to_make(api: Api) -> None:
    headers, cid = new_chat(api)
    stranger = api.new_user()
    assert share(api, stranger, cid).status_code == 404
    assert api.http.post(f"/api/conversations/unshare/{cid}", headers=stranger).status_code == 404
    assert share(api, {}, cid).status_code == 401
    assert api.http.post(f"/api/conversations/unshare/{cid}", headers=headers).status_code == 200  # not shared: fine
    base = str(api.http.base_url)
    for bad in ("shr_nothing", "nope", "shr_" + "a" * 60, "..%2F..%2Fetc"):
        assert httpx.get(f"{base}/api/shared/{bad}").status_code == 404
        assert httpx.get(f"{base}/api/shared/{bad}/events").status_code == 404
    with SharedSocket(base, "shr_nothing") as nothing:
        assert nothing.close_code() == 4404
    share_id = share(api, headers, cid).json()["share_id"]
    assert api.http.post(f"/api/conversations/del/{cid}", headers=headers).status_code == 200
    assert httpx.get(f"{base}/api/shared/{share_id}").status_code == 404  # deleted with its conversation


def test_a_viewer_on_one_process_watches_an_answer_made_on_the_other(processes: list[ServerProcess]) -> None:  # noqa: F811
    a = Api(processes[0].url)
    headers, cid = new_chat(a)
    share_id = share(a, headers, cid).json()["share_id"]
    seen: list[dict[str, Any]] = []
    opened, ended = threading.Event(), threading.Event()

    def watch() -> None:  # an SSE viewer on the other process
        with httpx.Client(base_url=processes[-1].url, timeout=30) as client:
            with client.stream("GET", f"/api/shared/{share_id}/events") as response:
                assert response.status_code == 200
                opened.set()
                for event in iter_frames(response.iter_lines()):
                    if event is not None:
                        seen.append(event)
        ended.set()

    threading.Thread(target=watch, daemon=True).start()
    assert opened.wait(10)
    answer = chat_events(a, headers, cid, "#fake tokens=3")
    with SharedSocket(processes[-1].url, share_id) as on_b:
        assert on_b.recv()["event"] == "ready"
        assert a.http.post(f"/api/conversations/unshare/{cid}", headers=headers).status_code == 200
        assert on_b.close_code(timeout=10) == 4404
    assert ended.wait(10)  # the SSE viewer ended too
    assert seen[:len(answer)] == answer and seen[-1]["event"] == "error"
