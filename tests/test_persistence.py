"""Data and tokens survive a restart of the server."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import Api, base_config
from tests.servers import ServerProcess, write_config


def test_restart_keeps_users_conversations_and_tokens(database: str, tmp_path: Path) -> None:
    """Stop the server, start it again on the same database: the token, the conversation
    and a logout made before the restart all still hold."""
    config = write_config(tmp_path / "config.yaml", base_config(tmp_path, database))
    first = ServerProcess(config, tmp_path).start()
    api = Api(first.url)
    username = api.register()
    token = api.login(username)
    revoked = api.login(username)
    headers = {"Authorization": f"Bearer {token}"}
    created = api.create_conversation(headers, title="keep me", api_key="sk-persist-123456789")
    api.http.post("/api/users/logout", headers={"Authorization": f"Bearer {revoked}"})
    assert first.stop() == 0
    api.http.close()

    second = ServerProcess(config, tmp_path).start()
    try:
        api = Api(second.url)
        history = api.http.get(f"/api/conversations/history/{created['conversation_id']}", headers=headers)
        assert history.status_code == 200
        assert history.json()["title"] == "keep me"
        assert api.http.get("/api/users/me", headers={"Authorization": f"Bearer {revoked}"}).status_code == 401
        api.login(username)
    finally:
        second.stop()
