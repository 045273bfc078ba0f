"""The conversation WebSocket through the real server: auth, events, commands, hostile clients."""
from __future__ import annotations

import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import Api
from tests.servers import ServerProcess
from tests.test_chat import assert_complete, chat_events, history, new_chat
from tests.wsclient import Socket, bearer, masked_frame, raw_handshake


def ready(ws: Socket) -> dict:
    frame = ws.recv()
    assert frame["event"] == "ready", frame
    return frame


def test_header_auth_ready_and_chat(server: ServerProcess, api: Api) -> None:
    """Header auth gets `ready`; a message frame streams the whole sequence to the socket."""
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as socket:
        frame = ready(socket)
        assert frame == {"event": "ready", "data": "", "conversation_id": cid, "generating": False,
                         "last_event_id": frame["last_event_id"]}
        socket.send({"type": "message", "content": "#fake tokens=4"})
        events = socket.recv_until("full_response")
    assert assert_complete(events, cid) == "t0 t1 t2 t3 "
    assert [m["role"] for m in history(api, headers, cid)] == ["user", "assistant"]


def test_first_frame_auth(server: ServerProcess, api: Api) -> None:
    headers, cid = new_chat(api)
    with Socket(server.url, cid) as socket:
        socket.send({"type": "auth", "token": bearer(headers)})
        assert ready(socket)["conversation_id"] == cid
        socket.send({"type": "ping"})
        assert socket.recv() == {"event": "pong", "data": ""}


@pytest.mark.parametrize(
    "first",
    ["not json", {"type": "auth"}, {"type": "auth", "token": "garbage"}, {"type": "message", "content": "hi"},
     {"type": "auth", "token": 5}],
)
def test_bad_auth_closes_4401(server: ServerProcess, api: Api, first) -> None:
    _, cid = new_chat(api)
    with Socket(server.url, cid) as socket:
        socket.send(first)
        assert socket.close_code() == 4401


def test_bad_header_token_and_logged_out_token_close_4401(server: ServerProcess, api: Api) -> None:
    headers, cid = new_chat(api)
    with Socket(server.url, cid, {"Authorization": "Bearer forged.token.here"}) as socket:
        assert socket.close_code() == 4401
    api.http.post("/api/users/logout", headers=headers)
    with Socket(server.url, cid, headers) as socket:
        assert socket.close_code() == 4401


def test_auth_timeout_closes_4401(server: ServerProcess, api: Api) -> None:
    """A socket that never authenticates is closed (the test server allows 1 s)."""
    _, cid = new_chat(api)
    with Socket(server.url, cid) as socket:
        assert socket.close_code(timeout=5) == 4401


def test_someone_elses_or_missing_conversation_closes_4404(server: ServerProcess, api: Api) -> None:
    """Another user's conversation closes exactly like a missing one."""
    _, cid = new_chat(api)
    intruder = api.new_user()
    for target in (cid, 2**52, "abc", "-1"):
        with Socket(server.url, target, intruder) as socket:
            assert socket.close_code() == 4404, target


def test_second_tab_sees_everything(server: ServerProcess, api: Api) -> None:
    """Two sockets on one conversation both get the user message and the whole stream, in order."""
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as first, Socket(server.url, cid, headers) as second:
        ready(first), ready(second)
        first.send({"type": "message", "content": "#fake tokens=5 delay_ms=10"})
        a, b = first.recv_until("full_response"), second.recv_until("full_response")
    assert a == b
    assert a[0]["event"] == "user_message" and a[0]["data"] == "#fake tokens=5 delay_ms=10"


def test_sse_chat_reaches_the_socket(server: ServerProcess, api: Api) -> None:
    """A generation started over HTTP streams to the conversation's sockets too."""
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as socket:
        ready(socket)
        sse = chat_events(api, headers, cid, "#fake tokens=3")
        assert socket.recv_until("full_response") == sse


def test_stop_frame(server: ServerProcess, api: Api) -> None:
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as socket:
        ready(socket)
        socket.send({"type": "message", "content": "#fake tokens=200 delay_ms=20"})
        socket.recv_until("message")
        socket.send({"type": "stop"})
        events = socket.recv_until("full_response")
    assert [e for e in events if e["event"] == "done"][0]["reason"] == "cancelled"


def test_generating_flag_and_conflict(server: ServerProcess, api: Api) -> None:
    """`ready` says a generation runs; a message meanwhile gets an error event, the socket stays."""
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as first:
        ready(first)
        first.send({"type": "message", "content": "#fake tokens=50 delay_ms=20"})
        first.recv_until("message")
        with Socket(server.url, cid, headers) as second:
            assert ready(second)["generating"] is True
            second.send({"type": "message", "content": "again"})
            error = second.recv_until("error")[-1]
            assert error["code"] == "conflict" and "id" not in error
        first.send({"type": "stop"})
        first.recv_until("full_response")


def test_resume_on_connect_and_on_open_socket(server: ServerProcess, api: Api) -> None:
    """last_event_id on connect replays after it (after `ready`); a resume frame re-sends."""
    headers, cid = new_chat(api)
    events = chat_events(api, headers, cid, "#fake tokens=4")
    pivot = events[2]["id"]
    with Socket(server.url, cid) as socket:
        socket.send({"type": "auth", "token": bearer(headers), "last_event_id": pivot})
        assert ready(socket)["last_event_id"] == events[-1]["id"]
        assert socket.recv_until("full_response") == events[3:]
        socket.send({"type": "resume", "last_event_id": events[0]["id"]})
        assert socket.recv_until("full_response") == events[1:]
    with Socket(server.url, cid, headers, query=f"last_event_id={pivot}") as socket:
        ready(socket)
        assert socket.recv_until("full_response") == events[3:]


@pytest.mark.parametrize(
    "frame, words",
    [
        ("{not json", "JSON object"),
        ("[1, 2]", "JSON object"),
        ({"type": "dance"}, "unknown frame type"),
        ({"type": 5}, "string 'type'"),
        ({"no": "type"}, "string 'type'"),
        ({"type": "message"}, "'content' must be a string"),
        ({"type": "message", "content": 12}, "'content' must be a string"),
        ({"type": "message", "content": "   "}, "must not be empty"),
        ({"type": "message", "content": "x" * 32_001}, "longer than"),
        ({"type": "resume", "last_event_id": "abc"}, "non-negative integer"),
        ({"type": "resume", "last_event_id": -5}, "non-negative integer"),
        ({"type": "auth", "token": "x"}, "already authenticated"),
    ],
)
def test_bad_frames_get_error_and_socket_stays(server: ServerProcess, api: Api, frame, words: str) -> None:
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as socket:
        ready(socket)
        socket.send(frame)
        error = socket.recv()
        assert error["event"] == "error" and words in error["data"], error
        socket.send({"type": "ping"})
        assert socket.recv()["event"] == "pong"
    assert history(api, headers, cid) == []


def test_binary_frame_closes_1003(server: ServerProcess, api: Api) -> None:
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as socket:
        ready(socket)
        socket.send(b"\x00\x01binary")
        assert socket.close_code() == 1003


def test_oversized_frame_closes_1009(server: ServerProcess, api: Api) -> None:
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as socket:
        ready(socket)
        socket.send({"type": "message", "content": "x" * 300_000})
        assert socket.close_code() == 1009
    assert api.http.get("/healthz").status_code == 200


def test_client_still_sending_after_a_refused_frame_learns_why(server: ServerProcess, api: Api) -> None:
    """The server fails the connection on a frame too large, while the client is still
    sending. Closing the socket at once made the client's next frames draw a TCP reset,
    which discarded the close frame it had not read yet: 1006 in about one try of four.
    The server now reads and drops the rest until the client closes."""
    headers, cid = new_chat(api)
    codes = []
    for _ in range(20):
        with Socket(server.url, cid, headers) as socket:
            ready(socket)
            try:
                socket.send({"type": "message", "content": "x" * 300_000})
                for _ in range(200):
                    socket.send({"type": "ping"})
                codes.append(socket.close_code())
            except ConnectionClosed as closed:
                codes.append(closed.rcvd.code if closed.rcvd else 1006)
    assert codes == [1009] * 20


def test_ping_behind_a_frame_that_is_not_utf8(server: ServerProcess, api: Api) -> None:
    """A text frame that is not UTF-8 fails the connection (1007) while a ping that came in
    the same packet is still being handled: its pong must not be written after the
    server's EOF (asyncio's 'Fatal error on transport')."""
    headers, cid = new_chat(api)
    raw, received = raw_handshake(server.port, cid, headers["Authorization"])
    with raw:
        while b'"ready"' not in received:
            received += raw.recv(65536)
        raw.sendall(masked_frame(0x1, b"\xff\xfe not utf-8") + masked_frame(0x9, b"ping"))
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    close = received.index(b"\x88")  # the server's close frame: unmasked, code first
    assert int.from_bytes(received[close + 2:close + 4], "big") == 1007
    time.sleep(0.2)
    assert "Fatal error" not in server.log()


def test_client_that_does_not_read_is_cut_off(server: ServerProcess, api: Api) -> None:
    """A socket that never reads fills its bounded queue and is closed 1008; others carry on.

    Large events fill the TCP buffers within a fraction of a second, so the queue overflows
    while the server's send is blocked, well before the keep-alive ping (1 s here) times
    out; the close must not wait for a send that never completes (it did: 1011, or the
    close frame lost to a reset, with the Redis broker)."""
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as lazy:
        lazy.send({"type": "message", "content": "#fake tokens=600 size=20000"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(history(api, headers, cid)) < 2:
            time.sleep(0.1)
        assert len(history(api, headers, cid)) == 2  # the generation finished regardless
        assert lazy.close_code(timeout=30) == 1008
    with Socket(server.url, cid, headers) as fresh:
        ready(fresh)
        fresh.send({"type": "ping"})
        assert fresh.recv()["event"] == "pong"


def test_a_reader_that_lags_now_and_then_gets_every_event_once_in_order(server: ServerProcess, api: Api) -> None:
    """Events go straight to a socket's connection while it keeps up, and through its
    queue while the connection's buffer is full: a reader that stops for a second while
    4 MB come, more than the kernel's buffers hold on loopback here (its own are kept
    small), and then catches up. Switching between the two ways loses, repeats and
    reorders nothing. (Counted by hand: in each run the connection refused an event once,
    and the rest of the lag went the queue's way. The broker's test of the switch is the
    exact one, this the real connection: a sink that ignored the queue failed it 1 in 12.)"""
    headers, cid = new_chat(api)
    small = socket.socket()
    small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    small.connect(("127.0.0.1", server.port))
    with Socket(server.url, cid, headers, max_queue=1, sock=small) as reader:
        ready(reader)
        reader.send({"type": "message", "content": "#fake tokens=200 size=20000 delay_ms=5"})  # 4 MB
        events = []
        while not events or events[-1]["event"] != "full_response":
            events.append(reader.recv(timeout=20))
            if len(events) == 3:
                time.sleep(1.0)  # the server's buffers for this socket fill meanwhile
    ids = [e["id"] for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    deltas = [e["data"] for e in events if e["event"] == "message"]
    assert len(deltas) == 200 and "".join(deltas) == events[-1]["data"]


def test_a_refused_handshake_is_answered_and_logs_no_error(server: ServerProcess) -> None:
    """A WebSocket upgrade without a key is a 400 from the handshake, not a server fault
    (the socket's setup once failed on the scope such a refusal never gets)."""
    logged = len(server.log())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"GET /ws/conversations/1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 400")
    time.sleep(0.2)
    new = server.log()[logged:]
    assert "Traceback" not in new and "Fatal error" not in new, new


def test_deleting_the_conversation_closes_its_sockets(server: ServerProcess, api: Api) -> None:
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as socket:
        ready(socket)
        api.http.post(f"/api/conversations/del/{cid}", headers=headers)
        assert socket.recv()["event"] == "error"
        assert socket.close_code() == 4404


def test_nul_in_content_is_an_error_event(server: ServerProcess, api: Api) -> None:
    """A NUL character (which PostgreSQL cannot store) is refused like any bad frame."""
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as socket:
        ready(socket)
        socket.send({"type": "message", "content": "a\x00b"})
        assert "NUL" in socket.recv()["data"]
        socket.send({"type": "resume"})
        assert "required" in socket.recv()["data"]
        socket.send({"type": "ping"})
        assert socket.recv()["event"] == "pong"


def test_logout_ends_an_open_socket_at_once(server: ServerProcess, api: Api) -> None:
    """No command needed: the socket is told why and closed 4401 (tests/test_sessions.py: in every process)."""
    headers, cid = new_chat(api)
    with Socket(server.url, cid, headers) as socket:
        ready(socket)
        assert api.http.post("/api/users/logout", headers=headers).status_code == 200
        ended = socket.recv(timeout=3)
        assert ended["event"] == "error" and ended["code"] == "stream_ended" and "session ended" in ended["data"]
        assert socket.close_code(timeout=3) == 4401
