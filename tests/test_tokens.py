"""API tokens and account security (DESIGN.md, Programmatic and shared access): tokens
made, listed, deleted and refused at once in every process; a password change and "log
out everywhere" end every login session, its open sockets included; API tokens stay."""
from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import PASSWORD, Api
from tests.servers import ServerProcess
from tests.test_chat import chat_events, new_chat
from tests.test_sessions import processes  # noqa: F401  (two processes with Redis, one without: reused)
from tests.wsclient import Socket


def make_token(api: Api, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = api.http.post("/api/tokens", headers=headers, json={"name": "script", **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_is_shown_once_and_works_wherever_a_login_does(api: Api) -> None:
    headers, cid = new_chat(api)
    made = make_token(api, headers, name="nightly job", expires_in_days=30)
    assert made["token"].startswith("rtllm_") and made["token_id"].startswith("tok_")
    assert made["name"] == "nightly job" and made["expires_time"] - made["created_time"] == 30 * 86400
    listed = api.http.get("/api/tokens", headers=headers).json()
    assert listed == [{k: made[k] for k in ("token_id", "name", "created_time", "expires_time")}]  # no secret
    token = bearer(made["token"])
    me = api.http.get("/api/users/me", headers=token)
    assert me.status_code == 200 and me.json()["user_id"] == api.http.get("/api/users/me", headers=headers).json()["user_id"]
    events = chat_events(api, token, cid, "#fake tokens=2")
    assert events[-1]["event"] == "full_response"
    with Socket(str(api.http.base_url), cid, token) as socket:  # header auth
        assert socket.recv()["event"] == "ready"
    with Socket(str(api.http.base_url), cid) as socket:  # the auth frame
        socket.send({"type": "auth", "token": made["token"]})
        assert socket.recv()["event"] == "ready"
    assert make_token(api, headers)["expires_time"] is None  # without expires_in_days: until deleted


def test_api_tokens_do_not_manage_tokens_nor_log_out(api: Api) -> None:
    headers = api.new_user()
    made = make_token(api, headers)
    token = bearer(made["token"])
    assert api.http.post("/api/tokens", headers=token, json={"name": "more"}).status_code == 403
    assert api.http.post(f"/api/tokens/del/{made['token_id']}", headers=token).status_code == 403
    assert api.http.get("/api/tokens", headers=token).status_code == 200  # listing is harmless
    logout = api.http.post("/api/users/logout", headers=token)
    assert logout.status_code == 400 and "delete it" in logout.json()["error"]
    assert api.http.get("/api/users/me", headers=token).status_code == 200


@pytest.mark.parametrize("body, fragment", [
    ({}, "'name'"),
    ({"name": ""}, "'name'"),
    ({"name": "   "}, "'name'"),
    ({"name": 7}, "'name'"),
    ({"name": "x" * 101}, "'name'"),
    ({"name": "ok", "expires_in_days": 0}, "expires_in_days"),
    ({"name": "ok", "expires_in_days": 3651}, "expires_in_days"),
    ({"name": "ok", "expires_in_days": "soon"}, "expires_in_days"),
    ({"name": "ok", "expires_in_days": 1.5}, "expires_in_days"),
])
def test_token_requests_refuse_bad_input(api: Api, body: Any, fragment: str) -> None:
    headers = api.new_user()
    response = api.http.post("/api/tokens", headers=headers, json=body)
    assert response.status_code == 400 and fragment in response.json()["error"], response.text
    assert api.http.get("/api/tokens", headers=headers).json() == []


@pytest.mark.parametrize("token", ["rtllm_", "rtllm_" + "A" * 43, "rtllm_%00", "rtllm_" + "x" * 5000])
def test_unknown_api_tokens_are_401(api: Api, token: str) -> None:
    response = api.http.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_someone_elses_token_cannot_be_deleted(api: Api) -> None:
    owner, stranger = api.new_user(), api.new_user()
    made = make_token(api, owner)
    assert api.http.post(f"/api/tokens/del/{made['token_id']}", headers=stranger).status_code == 404
    assert api.http.post("/api/tokens/del/tok_nothing", headers=owner).status_code == 404
    assert api.http.get("/api/users/me", headers=bearer(made["token"])).status_code == 200
    assert api.http.get("/api/tokens", headers=stranger).json() == []


# -- two processes (with Redis; one with the in-process broker) -------------------------

def test_a_token_deleted_in_one_process_is_refused_by_the_other(processes: list[ServerProcess]) -> None:  # noqa: F811
    a, b = Api(processes[0].url), Api(processes[-1].url)
    headers, cid = new_chat(a)
    made = make_token(a, headers)
    token = bearer(made["token"])
    assert b.http.get("/api/users/me", headers=token).status_code == 200
    with Socket(processes[-1].url, cid, token) as on_b:
        assert on_b.recv()["event"] == "ready"
        started = time.monotonic()
        assert a.http.post(f"/api/tokens/del/{made['token_id']}", headers=headers).status_code == 200
        assert b.http.get("/api/users/me", headers=token).status_code == 401  # at once, on the other process
        assert on_b.close_code(timeout=10) == 4401  # and its open socket ends
        assert time.monotonic() - started < 5
    assert a.http.get("/api/tokens", headers=headers).json() == []


def test_a_password_change_ends_every_login_session(processes: list[ServerProcess]) -> None:  # noqa: F811
    a, b = Api(processes[0].url), Api(processes[-1].url)
    username = a.register()
    first, second = (bearer(a.login(username)) for _ in range(2))
    token = bearer(make_token(a, first)["token"])
    cid = a.create_conversation(first, model="fake-model")["conversation_id"]
    with Socket(processes[-1].url, cid, second) as opened_before:
        assert opened_before.recv()["event"] == "ready"
        wrong = a.http.post("/api/users/password", headers=first,
                            json={"old_password": "not it", "new_password": "a new password"})
        assert wrong.status_code == 401
        short = a.http.post("/api/users/password", headers=first, json={"old_password": PASSWORD, "new_password": "x"})
        assert short.status_code == 400
        changed = a.http.post("/api/users/password", headers=first,
                              json={"old_password": PASSWORD, "new_password": "a new password"})
        assert changed.status_code == 200, changed.text
        assert opened_before.close_code(timeout=10) == 4401  # a socket on the other process ends
    for api, headers in ((a, first), (b, second)):
        assert api.http.get("/api/users/me", headers=headers).status_code == 401
    assert b.http.get("/api/users/me", headers=token).status_code == 200  # API tokens stay
    assert b.http.post("/api/users/login", json={"username": username, "password": PASSWORD}).status_code == 401
    fresh = bearer(b.login(username, "a new password"))
    assert a.http.get("/api/users/me", headers=fresh).status_code == 200


def test_log_out_everywhere(processes: list[ServerProcess]) -> None:  # noqa: F811
    a, b = Api(processes[0].url), Api(processes[-1].url)
    username = a.register()
    sessions = [bearer(a.login(username)) for _ in range(2)]
    token = bearer(make_token(a, sessions[0])["token"])
    assert b.http.post("/api/users/logout_all", headers=sessions[1]).status_code == 200
    for headers in sessions:
        assert a.http.get("/api/users/me", headers=headers).status_code == 401
    assert a.http.get("/api/users/me", headers=token).status_code == 200
    assert a.http.get("/api/users/me", headers=bearer(a.login(username))).status_code == 200  # log in again


def test_the_tokens_path_answers_its_methods(api: Api) -> None:
    headers = api.new_user()
    assert api.http.head("/api/tokens", headers=headers).status_code == 200
    refused = api.http.put("/api/tokens", headers=headers)
    assert refused.status_code == 405 and set(refused.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
