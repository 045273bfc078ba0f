"""Create, list, history and delete conversations; someone else's is always a 404."""
from __future__ import annotations

import time
import uuid

import pytest

from realtime_llm.app import routes
from tests.conftest import Api
from tests.fake_upstream import FakeUpstream
from tests.test_chat import _slow_chat_in_background, history
from tests.wsclient import Socket


def test_create_shape_and_defaults(api: Api) -> None:
    """Creation answers the seed's shape plus `params` ({} when none: DESIGN.md, generation
    settings); model defaults, an omitted title is ""."""
    headers = api.new_user()
    created = api.create_conversation(headers)
    assert set(created) == {"conversation_id", "title", "model", "api_key", "created_time", "params"}
    assert created["params"] == {}
    assert created["title"] == ""
    assert created["model"] == "demo"
    assert created["api_key"] == ""
    assert isinstance(created["conversation_id"], int) and 0 < created["conversation_id"] < 2**53
    assert abs(created["created_time"] - time.time()) < 60
    assert api.create_conversation(headers, title=None)["title"] == ""


def test_create_with_everything(api: Api) -> None:
    """Title, model, system prompt and key are stored; the key only ever comes back masked."""
    headers = api.new_user()
    key = "sk-test-0123456789abcdef7f3a"
    created = api.create_conversation(headers, title="Trip plans", model="demo-fast", api_key=key, system_prompt="Be brief.")
    assert created["title"] == "Trip plans"
    assert created["model"] == "demo-fast"
    assert created["api_key"] == "sk-…7f3a"
    history = api.http.get(f"/api/conversations/history/{created['conversation_id']}", headers=headers).json()
    assert key not in str(history)


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "   "},
        {"title": 5},
        {"title": "x" * 201},
        {"model": "no-such-model"},
        {"model": 3},
        {"api_key": ["sk"]},
        {"system_prompt": {"a": 1}},
        {"system_prompt": "s" * 8001},
    ],
)
def test_create_rejects_bad_input(api: Api, body: dict[str, object]) -> None:
    """Empty titles, unknown models, wrong types and oversized fields are a 400."""
    response = api.http.post("/api/conversations/create", json=body, headers=api.new_user())
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_create_accepts_no_body(api: Api) -> None:
    """An empty body means all defaults, as with the original."""
    response = api.http.post("/api/conversations/create", headers=api.new_user())
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "demo"


def test_list_newest_first_and_own_only(api: Api) -> None:
    """The list holds the caller's conversations, newest first, and nobody else's."""
    alice, bob = api.new_user(), api.new_user()
    ids = [api.create_conversation(alice, title=f"c{i}")["conversation_id"] for i in range(3)]
    api.create_conversation(bob, title="bob's")
    listed = api.http.get("/api/conversations/list", headers=alice).json()
    assert [c["conversation_id"] for c in listed] == ids[::-1]
    assert [c["title"] for c in listed] == ["c2", "c1", "c0"]
    assert all(set(c) == {"conversation_id", "title", "created_time"} for c in listed)
    assert api.http.get("/api/conversations/list", headers=api.new_user()).json() == []


def test_history_shape(api: Api) -> None:
    """History of a new conversation: the seed's shape with no messages (the system prompt is never listed)."""
    headers = api.new_user()
    created = api.create_conversation(headers, title="t", system_prompt="secret instructions")
    response = api.http.get(f"/api/conversations/history/{created['conversation_id']}", headers=headers)
    assert response.status_code == 200
    assert response.json() == {
        "conversation_id": created["conversation_id"],
        "title": "t",
        "model": "demo",
        "messages": [],
        "created_time": created["created_time"],
        "params": {},  # DESIGN.md, generation settings: history answers them, {} when none
    }


def test_someone_elses_conversation_is_404(api: Api) -> None:
    """Another user's conversation is answered exactly like a missing one, on every route."""
    owner, intruder = api.new_user(), api.new_user()
    cid = api.create_conversation(owner, title="private")["conversation_id"]
    missing = 2**52
    for method, template in (("GET", "/api/conversations/history/{}"), ("POST", "/api/conversations/del/{}")):
        theirs = api.http.request(method, template.format(cid), headers=intruder)
        absent = api.http.request(method, template.format(missing), headers=intruder)
        assert theirs.status_code == absent.status_code == 404
        assert theirs.json() == absent.json()
    assert api.http.get(f"/api/conversations/history/{cid}", headers=owner).status_code == 200


@pytest.mark.parametrize("bad", ["abc", "1.5", "0x10", "１２", "%20", "1e3"])
def test_non_integer_id_is_400(api: Api, bad: str) -> None:
    headers = api.new_user()
    for method, template in (("GET", "/api/conversations/history/{}"), ("POST", "/api/conversations/del/{}")):
        response = api.http.request(method, template.format(bad), headers=headers)
        assert response.status_code == 400, (bad, response.text)


@pytest.mark.parametrize("odd", ["0", "-1", "99999999999999999999999", str(2**63)])
def test_out_of_range_id_is_404(api: Api, odd: str) -> None:
    response = api.http.get(f"/api/conversations/history/{odd}", headers=api.new_user())
    assert response.status_code == 404


def test_delete(api: Api) -> None:
    """Deleting removes it from history and list; a second delete is a 404."""
    headers = api.new_user()
    cid = api.create_conversation(headers, title="gone soon")["conversation_id"]
    response = api.http.post(f"/api/conversations/del/{cid}", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"message": "Conversation deleted successfully"}
    assert api.http.get(f"/api/conversations/history/{cid}", headers=headers).status_code == 404
    assert api.http.get("/api/conversations/list", headers=headers).json() == []
    assert api.http.post(f"/api/conversations/del/{cid}", headers=headers).status_code == 404


def test_unknown_routes_and_methods(api: Api) -> None:
    """Unknown routes are 404 and wrong methods 405, both as JSON errors."""
    response = api.http.get("/api/nothing-here")
    assert response.status_code == 404 and "error" in response.json()
    response = api.http.get("/api/conversations/create", headers=api.new_user())
    assert response.status_code == 405 and "error" in response.json()


def test_models_listing(api: Api) -> None:
    """GET /api/models names the default and each configured model."""
    response = api.http.get("/api/models", headers=api.new_user())
    assert response.status_code == 200
    body = response.json()
    assert body["default"] == "demo"
    assert {"id": "demo", "provider": "demo", "kind": "demo", "pattern": False} in body["models"]


def test_health_ready_openapi(api: Api) -> None:
    """Health and readiness answer without a token; the OpenAPI document lists every route."""
    assert api.http.get("/healthz").json() == {"status": "ok"}
    ready = api.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    document = api.http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    for route in routes():
        for method in (getattr(route, "methods", None) or set()) - {"HEAD"}:
            assert method.lower() in document["paths"].get(route.path, {}), (route.path, method)


def test_an_answer_of_a_deleted_conversation_lands_nowhere(api: Api, upstream: FakeUpstream) -> None:
    """A deletes its newest conversation mid-answer while B creates one: B's never gets
    the deleted id (it did on SQLite), and nothing of A's answer reaches B — not in its
    history, its usage or its socket."""
    alice, bob = api.new_user(), api.new_user()
    doomed = api.create_conversation(alice, model="fake-model")["conversation_id"]
    message = f"#fake tokens=30 delay_ms=50\n{uuid.uuid4()}"
    running = _slow_chat_in_background(api, alice, doomed, message)
    upstream.request_for(message)
    assert api.http.post(f"/api/conversations/del/{doomed}", headers=alice).status_code == 200
    theirs = api.create_conversation(bob, model="fake-model")["conversation_id"]
    assert theirs > doomed
    with Socket(str(api.http.base_url), theirs, bob) as socket:
        assert socket.recv()["event"] == "ready"
        running["thread"].join(15)
        assert not running["thread"].is_alive()
        time.sleep(0.5)  # a late save or publish of A's answer would have happened by now
        socket.send({"type": "ping"})
        assert socket.recv()["event"] == "pong"  # nothing of A's came before it
    assert history(api, bob, theirs) == []
    assert api.http.get("/api/users/me", headers=bob).json()["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert api.http.get(f"/api/conversations/history/{doomed}", headers=alice).status_code == 404
