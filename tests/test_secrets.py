"""No secret leaks: a whole session at DEBUG logs no password, token, API key or server
secret, and the database files hold no API key in clear."""
from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import PASSWORD, PROVIDER_KEY, Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.sse import parse_stream
from tests.wsclient import Socket

CONVERSATION_KEY = "sk-conversation-SECRET-0123456789abcdef"
NEW_KEY = "sk-updated-SECRET-fedcba9876543210"


def test_a_debug_session_leaks_no_secret(database: str, broker: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(tmp_path, database, upstream, broker)
    config["server"]["log_level"] = "debug"
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    api = Api(server.url)
    try:
        username = api.register()
        token = api.login(username)
        headers = {"Authorization": f"Bearer {token}"}
        api.http.post("/api/users/login", json={"username": username, "password": "a wrong password"})
        cid = api.create_conversation(headers, model="fake-model", api_key=CONVERSATION_KEY)["conversation_id"]
        events = parse_stream(api.http.post(f"/api/chat/{cid}", json={"message": "#fake tokens=3"},
                                            headers=headers).content)
        assert events[-1]["event"] == "full_response"
        assert upstream.received[-1].headers["authorization"] == f"Bearer {CONVERSATION_KEY}"  # it was used
        failing = api.create_conversation(headers, model="fake-model", api_key=CONVERSATION_KEY)["conversation_id"]
        api.http.post(f"/api/chat/{failing}", json={"message": "#fake status=401"}, headers=headers)
        api.http.post(f"/api/conversations/update/{cid}", json={"api_key": NEW_KEY}, headers=headers)
        with Socket(server.url, cid, headers) as socket:
            assert socket.recv()["event"] == "ready"
            socket.send({"type": "message", "content": "#fake tokens=2"})
            socket.recv_until("full_response")
        with Socket(server.url, cid) as socket:  # first-frame auth
            socket.send({"type": "auth", "token": token})
            assert socket.recv()["event"] == "ready"
        api.http.get(f"/api/conversations/export/{cid}", headers=headers)
        api.http.post("/api/users/logout", headers=headers)
        api.http.get("/api/users/me", headers=headers)  # a revoked token, presented again
    finally:
        api.http.close()
        server.stop()
    log = server.log()
    assert "DEBUG" in log  # the level really was debug
    secret = (tmp_path / "jwt.secret").read_text().strip()
    for name, value in {"password": PASSWORD, "token": token, "token signature": token.rsplit(".", 1)[1],
                        "conversation API key": CONVERSATION_KEY, "updated API key": NEW_KEY,
                        "provider API key": PROVIDER_KEY, "JWT secret": secret}.items():
        assert value not in log, f"the {name} appears in the log"
    if database == "sqlite":
        for path in tmp_path.glob("chat.db*"):  # the database, its WAL and shared memory
            raw = path.read_bytes()
            for key in (CONVERSATION_KEY, NEW_KEY):
                assert key.encode() not in raw, f"an API key in clear in {path.name}"


def test_a_generated_secret_lives_beside_the_sqlite_path_whatever_the_database(database: str, tmp_path: Path) -> None:
    """With no jwt.secret nor secret_file the secret goes to <sqlite.path>.secret (mode
    0600), with PostgreSQL too, not into whatever directory the server started in. A
    PostgreSQL deployment's secret from the old place (./realtime_llm.secret) moves there,
    so its tokens and sealed API keys keep working; SQLite never used that file."""
    import jwt

    config = base_config(tmp_path, database)
    del config["jwt"]["secret_file"]
    config["sqlite"] = {"path": str(tmp_path / "data" / "app.db")}
    legacy = tmp_path / "realtime_llm.secret"
    legacy.write_text("legacy-secret-" + "x" * 40 + "\n")
    legacy.chmod(0o600)
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    try:
        placed = tmp_path / "data" / "app.db.secret"
        assert placed.stat().st_mode & 0o777 == 0o600
        api = Api(server.url)
        user_id = api.http.get("/api/users/me", headers=api.new_user()).json()["user_id"]
        now = int(time.time())
        forged = jwt.encode({"sub": str(user_id), "iat": now, "exp": now + 60, "jti": "legacy"},
                            "legacy-secret-" + "x" * 40, algorithm="HS256")
        answer = api.http.get("/api/users/me", headers={"Authorization": f"Bearer {forged}"}).status_code
        if database == "sqlite":
            assert legacy.exists() and answer == 401
        else:
            assert not legacy.exists() and placed.read_text().startswith("legacy-secret-") and answer == 200
    finally:
        server.stop()
