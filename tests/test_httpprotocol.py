"""The HTTP connection's own bounds, over raw sockets to the real server: header bytes,
header time (slowloris), idle connections, slow bodies, and clients that hang up mid-request."""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import Api, base_config
from tests.servers import ServerProcess, established_connections, write_config

HEADER_TIMEOUT = 1.0
KEEP_ALIVE = 2
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with short connection timeouts (the bounds do not depend on database or broker)."""
    workdir = tmp_path_factory.mktemp("bounded")
    config = base_config(workdir, "sqlite")
    config["server"].update(max_header_bytes=8192, header_timeout_seconds=HEADER_TIMEOUT,
                            keep_alive_seconds=KEEP_ALIVE, body_timeout_seconds=BODY_TIMEOUT)
    server = ServerProcess(write_config(workdir / "config.yaml", config), workdir).start()
    yield server
    server.stop()


def connect(server: ServerProcess) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return raw


def read_all(raw: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    raw.settimeout(timeout)
    received = b""
    try:
        while chunk := raw.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def read_response(raw: socket.socket, timeout: float) -> bytes:
    """One whole response: the headers, then as many body bytes as Content-Length says
    (the server may send them in separate segments)."""
    raw.settimeout(timeout)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = raw.recv(65536)
        if not chunk:
            return received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := raw.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def closed_within(raw: socket.socket, seconds: float) -> bool:
    raw.settimeout(seconds)
    try:
        while raw.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_huge_headers_get_431_and_the_connection_is_closed(bounded: ServerProcess) -> None:
    """An unauthenticated request with a 10 MiB header is refused once it passes the bound,
    without the server reading (and holding) the rest."""
    with connect(bounded) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 10 * 2**20:
                raw.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(raw)
    assert sent < 10 * 2**20  # refused long before the end (the server stopped reading)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]  # a reset may discard it


def test_headers_over_the_bound_are_431_and_under_it_are_served(bounded: ServerProcess) -> None:
    with connect(bounded) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        assert read_all(raw).startswith(b"HTTP/1.1 431 ")
    with connect(bounded) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 7000 + b"\r\n\r\n")
        assert read_all(raw).startswith(b"HTTP/1.1 200 ")


def test_a_large_body_in_one_read_is_not_taken_for_headers(bounded: ServerProcess) -> None:
    """Headers and a 100 kB body arriving together: the body does not count against the header bound."""
    body = b'{"username":"' + b"u" * 100_000 + b'","password":"x"}'
    with connect(bounded) as raw:
        raw.sendall(b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json"
                    b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert read_all(raw).startswith(b"HTTP/1.1 400 ")  # the username is too long: read, and judged


def test_slowloris_headers_are_cut_off(bounded: ServerProcess) -> None:
    """A header line every half second never completes a request: closed after header_timeout_seconds."""
    with connect(bounded) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\n")
        began = time.monotonic()
        closed = False
        while time.monotonic() - began < HEADER_TIMEOUT + 5:
            try:
                raw.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_within(raw, 0.5):
                closed = True
                break
    assert closed


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive(bounded: ServerProcess) -> None:
    with connect(bounded) as raw:
        assert closed_within(raw, KEEP_ALIVE + 5)


def test_a_kept_alive_connection_serves_requests_spaced_out_within_the_bounds(bounded: ServerProcess) -> None:
    """The bounds do not disturb an ordinary keep-alive client."""
    with connect(bounded) as raw:
        for _ in range(3):
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            raw.settimeout(5)
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += raw.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(KEEP_ALIVE / 2)


def test_a_slow_body_is_408(bounded: ServerProcess) -> None:
    with connect(bounded) as raw:
        raw.sendall(b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 50\r\n\r\n{\"user")
        answer = read_response(raw, BODY_TIMEOUT + 5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b'"request_timeout"' in answer


@pytest.mark.parametrize("request_bytes", [
    # A body cut short by the client hanging up.
    b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"use",
    # A chunked body that is malformed half-way.
    b"POST /api/users/register HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"use\r\nzz\r\n",
    # A chunked body whose client leaves before the last chunk.
    b"POST /api/conversations/create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n",
])
def test_a_client_hanging_up_mid_request_is_not_a_server_error(bounded: ServerProcess, request_bytes: bytes) -> None:
    before = bounded.log()
    for _ in range(3):
        with connect(bounded) as raw:
            raw.sendall(request_bytes)
            time.sleep(0.2)
    time.sleep(0.5)
    assert Api(bounded.url).http.get("/healthz").status_code == 200
    added = bounded.log()[len(before):]
    assert "Traceback" not in added and "ERROR" not in added, added
    assert len(added.splitlines()) <= 3  # at most one quiet line a hang-up


def test_bounds_leave_no_connection_behind(bounded: ServerProcess) -> None:
    """After all of the above, the server holds no connection from a client that is gone."""
    assert bounded.process is not None
    deadline = time.monotonic() + KEEP_ALIVE + 5
    while established_connections(bounded.process.pid, bounded.port, states=("01", "08")) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert established_connections(bounded.process.pid, bounded.port, states=("01", "08")) == 0


def test_the_bounds_are_validated(tmp_path: Path) -> None:
    config = base_config(tmp_path, "sqlite")
    config["server"]["max_header_bytes"] = 10
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path)
    with pytest.raises(RuntimeError, match="max_header_bytes"):
        server.start(timeout=10)
