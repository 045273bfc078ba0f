"""Fuzzing the running server: schemathesis over /openapi.json, and a WebSocket fuzzer of
our own. Neither may find a 5xx, a response that breaks the published schema, a crashed
process or a leaked socket.

The volume is bounded for CI (FUZZ_EXAMPLES per operation, FUZZ_FRAMES frames; raise them
by environment variable for a longer hunt); the seeds are random and printed on failure,
and FUZZ_SEED replays one.
"""
from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import Api, base_config
from tests.servers import ServerProcess, established_connections, write_config

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ_FRAMES = int(os.environ.get("FUZZ_FRAMES", "3000"))
SCHEMATHESIS_CONFIG = Path(__file__).parent / "fuzz" / "schemathesis.toml"
MAX_FRAME = 16_384  # limits.max_ws_frame_bytes of the fuzzed server


@pytest.fixture
def target(database: str, tmp_path: Path) -> Iterator[ServerProcess]:
    config = base_config(tmp_path, database)
    config["limits"] = {**config["limits"], "max_ws_frame_bytes": MAX_FRAME}
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    yield server
    server.stop()


def assert_healthy(server: ServerProcess) -> None:
    assert server.process is not None and server.process.poll() is None, server.log()[-3000:]
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    log = server.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]


def test_schemathesis_finds_no_server_error_and_no_schema_violation(target: ServerProcess, tmp_path: Path) -> None:
    api = Api(target.url)
    headers = api.new_user()
    # A conversation of the caller's for the operations that take an id (they would
    # otherwise mostly meet 404s); invalid ids are still generated for the negative cases.
    cid = api.create_conversation(headers)["conversation_id"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG.read_text() + f"""
[[operations]]
include-path-regex = "^/api/(chat|conversations/(update|export|history|branch|fork))/"
parameters = {{ "path.id" = {cid} }}
""")  # not /del/ (it would leave nothing for the rest)
    seed = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", f"{target.url}/openapi.json",  # every check: tests/fuzz/schemathesis.toml
        "-H", f"Authorization: {headers['Authorization']}",
        # Logging out would revoke the token the rest of the run uses (tests/test_users.py covers it).
        "--exclude-path", "/api/users/logout",
        "--max-examples", str(FUZZ_EXAMPLES), "--seed", str(seed), "--workers", "1",
        # A live event stream ends only when the client leaves: give each a second.
        "--request-timeout", "1", "--phases", "examples,coverage,fuzzing", "--no-color",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    output = run.stdout + run.stderr
    generated = re.search(r"(\d+) generated", output)
    assert run.returncode == 0, f"seed {seed}:\n{output[-8000:]}"
    assert generated is not None and int(generated.group(1)) >= 10 * FUZZ_EXAMPLES, output[-3000:]
    (Path("test-artifacts") / "fuzz").mkdir(parents=True, exist_ok=True)
    (Path("test-artifacts") / "fuzz" / f"schemathesis-{target.port}.txt").write_text(output)
    assert_healthy(target)
    api.http.close()


# --- the WebSocket fuzzer ---------------------------------------------------------------

TYPES = ["message", "stop", "resume", "ping", "auth", "regenerate", "branch", "", "MESSAGE", None, 7, ["ping"]]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**53, 2**63, -(2**63), 10**30, 3.0, 1.5, float("1e308")])
    if kind in (3, 4, 5):
        alphabet = "ab \x00\n\r\t\u2028\ufeff\U0001f600\\\"'<>{}"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
    if kind == 6:
        return "x" * rng.choice([0, 1, 1000, 40_000])
    if kind == 7:
        return rng.randrange(-5, 100)
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["type", "content", "last_event_id", "edit_message_id", "message_id", "token", "x"]):
            random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def random_frame(rng: random.Random) -> tuple[str, Any]:
    """("text", str) | ("bytes-as-text", bytes) | ("binary", bytes) | ("fragments", [str])"""
    roll = rng.random()
    if roll < 0.55:
        frame = {"type": rng.choice(TYPES)}
        for key in rng.sample(["content", "last_event_id", "edit_message_id", "message_id", "token", "extra"],
                              rng.randrange(0, 3)):
            frame[key] = random_value(rng)
        if frame["type"] == "message" and rng.random() < 0.5:
            frame["content"] = "hello " * rng.randrange(1, 5)
        return "text", json.dumps(frame, allow_nan=True)
    if roll < 0.7:
        return "text", json.dumps(random_value(rng))
    if roll < 0.8:  # broken JSON
        text = json.dumps({"type": "message", "content": "x" * rng.randrange(50)})
        cut = rng.randrange(len(text))
        return "text", text[:cut] + rng.choice(["", "\x00", "}", "{{", "\ud800".encode("utf-8", "surrogatepass").decode("latin-1")])
    if roll < 0.85:  # not UTF-8 at all, in a text frame
        return "bytes-as-text", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if roll < 0.9:
        return "binary", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if roll < 0.95:
        return "text", "[" * rng.choice([10, 1000, 5000]) + "]" * rng.choice([0, 10])
    return "fragments", ['{"type":', '"ping"', "}"]


def send_frame(ws: Any, kind: str, payload: Any) -> None:
    if kind == "text":
        ws.send(payload)
    elif kind == "bytes-as-text":
        ws.send(payload, text=True)
    elif kind == "binary":
        ws.send(payload)
    else:
        ws.send(iter(payload))


def drain(ws: Any) -> list[str]:
    """Whatever the server sent, until it pauses; raises ConnectionClosed once it closed."""
    received = []
    while True:
        try:
            received.append(ws.recv(timeout=0.002))
        except TimeoutError:
            return received


# Every TCP state but LISTEN: a connection the server never closed shows as established
# or, once the client has gone, as close-wait (and so on).
CONNECTED_STATES = ("01", "02", "03", "04", "05", "06", "07", "08", "09", "0B")


def client_connections(pid: int, port: int) -> int:
    return established_connections(pid, port, CONNECTED_STATES)


def port_states(port: int) -> list[str]:
    """The TCP states of every connection on `port` (for a failure message)."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in CONNECTED_STATES and fields[9] != "0":
                states.append(f"{fields[1]}->{fields[2]} state {fields[3]} queues {fields[4]}")
    return states


def open_websockets(server: ServerProcess) -> float:
    """The server's own count of WebSocket handlers running (its /metrics)."""
    with httpx.Client() as client:  # a connection of its own, closed at once
        metrics = client.get(server.url + "/metrics").text
    gauge = re.search(r"^realtime_llm_open_websockets (\S+)$", metrics, re.M)
    assert gauge is not None
    return float(gauge.group(1))


def raw_half_frame(port: int, path: str) -> None:
    """A client that upgrades by hand, sends half a frame and vanishes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        raw.recv(4096)
        raw.sendall(bytes([0x81, 0xFE, 0x40, 0x00]) + os.urandom(4) + b"partial")  # says 16 KiB, sends 7 bytes


def test_websocket_fuzzer_crashes_nothing_and_leaks_no_socket(target: ServerProcess) -> None:
    seed = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    api = Api(target.url)
    headers = api.new_user()
    cid = api.create_conversation(headers)["conversation_id"]
    assert target.process is not None
    pid = target.process.pid
    url = f"ws://127.0.0.1:{target.port}/ws/conversations/{cid}"
    sent = sockets = closes = 0
    close_codes: dict[int, int] = {}
    while sent < FUZZ_FRAMES:
        sockets += 1
        pre_auth = rng.random() < 0.2  # fuzz the authentication step too
        path = url if rng.random() < 0.9 else url.replace(str(cid), rng.choice(["0", "-1", "x", "9" * 30, "%00"]))
        try:
            with connect(path, additional_headers={} if pre_auth else headers, max_size=None,
                         open_timeout=5, close_timeout=2) as ws:
                for _ in range(rng.randrange(1, 60)):
                    kind, payload = random_frame(rng)
                    if rng.random() < 0.01:
                        kind, payload = "text", "x" * (MAX_FRAME + 1)  # over the frame limit: 1009
                    send_frame(ws, kind, payload)
                    sent += 1
                    for text in drain(ws):
                        event = json.loads(text)  # everything the server says is JSON with an event
                        assert isinstance(event, dict) and isinstance(event.get("event"), str), (seed, text)
                        assert event["event"] != "error" or event.get("code") != "internal", (seed, text)
        except ConnectionClosed as closed:
            closes += 1
            code = closed.rcvd.code if closed.rcvd else 1006
            close_codes[code] = close_codes.get(code, 0) + 1
            assert code in (1000, 1003, 1007, 1008, 1009, 4401, 4404), (seed, code, closed)
        except Exception as exc:  # the handshake refused (a bad path): must be a 4xx, never a 5xx
            assert "HTTP 5" not in str(exc), (seed, exc)
        if rng.random() < 0.05:
            raw_half_frame(target.port, f"/ws/conversations/{cid}")
    # A flood: many frames as fast as they go (the frame rate limit is off in tests).
    with connect(url, additional_headers=headers) as ws:
        ws.recv(timeout=5)
        for _ in range(500):
            ws.send('{"type":"ping"}')
        pongs = 0
        while pongs < 500:
            pongs += json.loads(ws.recv(timeout=10))["event"] == "pong"
    # Everything the fuzzer opened is closed again on the server's side too.
    api.http.close()  # (its keep-alive connection is not the fuzzer's)
    # Connections are counted before each /metrics probe, never after: the probe's own
    # connection may not be closed on the server's side yet (counting it failed this test
    # about one run in fifteen), and is closed by the next round.
    deadline = time.monotonic() + 30  # pings every second here: a live peer-less socket ends in ~2 s
    while True:
        held, handlers = client_connections(pid, target.port), open_websockets(target)
        if (held == 0 and handlers == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert held == 0, (seed, "connections left open", port_states(target.port), handlers)
    assert handlers == 0, (seed, "socket handlers still running")
    assert_healthy(target)
    # The conversation is still whole: whatever the fuzzer got saved is user/assistant pairs.
    history = httpx.get(f"{target.url}/api/conversations/history/{cid}", headers=headers).json()["messages"]
    assert all(m["role"] in ("user", "assistant") for m in history)
    print(f"websocket fuzzer: seed {seed}, {sent} frames over {sockets} sockets, closes {close_codes}")
