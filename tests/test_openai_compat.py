"""The OpenAI-compatible façade (DESIGN.md, Programmatic and shared access), driven by the
official `openai` package: models, completions streamed and not, usage, errors; with a
conversation, the answer is saved and reaches the conversation's other subscribers."""
from __future__ import annotations

import uuid

import openai
import orjson
import pytest

from tests.conftest import Api
from tests.fake_upstream import FakeUpstream
from tests.sse import http_chunks
from tests.test_chat import history, new_chat
from tests.wsclient import Socket


def client(api: Api, headers: dict[str, str]) -> openai.OpenAI:
    token = headers["Authorization"].split(" ", 1)[1]
    return openai.OpenAI(base_url=f"{api.http.base_url}/v1", api_key=token, max_retries=0, timeout=30)


def test_models_and_a_completion(api: Api, upstream: FakeUpstream) -> None:
    headers = api.new_user()
    sdk = client(api, headers)
    ids = {m.id for m in sdk.models.list()}
    assert {"demo", "demo-think"} <= ids and not any("*" in i for i in ids)
    marker = f"#fake tokens=3 usage=11,3\n{uuid.uuid4().hex[:8]}"
    done = sdk.chat.completions.create(model="fake-model", temperature=0.2,
                                       messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": marker}])
    assert done.object == "chat.completion" and done.choices[0].message.content == "t0 t1 t2 "
    assert done.choices[0].finish_reason == "stop" and done.choices[0].message.role == "assistant"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (11, 3, 14)
    sent = [r.body for r in upstream.received if r.body["messages"][-1]["content"] == marker][-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": marker}]
    assert sent["temperature"] == 0.2
    me = api.http.get("/api/users/me", headers=headers).json()
    assert me["usage"] == {"prompt_tokens": 11, "completion_tokens": 3}  # counted, as a chat would be


def test_a_streamed_completion_with_usage(api: Api) -> None:
    sdk = client(api, api.new_user())
    chunks = list(sdk.chat.completions.create(
        model="fake-model", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "#fake tokens=4 usage=5,4\nhi"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "t0 t1 t2 t3 "
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 9
    thinking = list(sdk.chat.completions.create(model="demo-think", stream=True,
                                                messages=[{"role": "user", "content": "think"}]))
    assert any(getattr(c.choices[0].delta, "reasoning_content", None) for c in thinking if c.choices)


@pytest.mark.parametrize("in_conversation", [False, True])
def test_a_streamed_completion_opens_and_ends_in_one_write_each(api: Api, in_conversation: bool) -> None:
    """Each chunk of the response is one write to the socket: the role's chunk goes with
    the first text (as OpenAI sends it), the finish, the usage and [DONE] together."""
    headers, cid = new_chat(api)
    body = {"model": "fake-model", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "#fake tokens=3 usage=5,3\nhi"}],
            **({"conversation_id": cid} if in_conversation else {})}
    chunks = http_chunks(str(api.http.base_url).rstrip("/"), "/v1/chat/completions", headers, body)
    writes = [[line.removeprefix(b"data: ") for line in chunk.split(b"\n\n") if line] for chunk in chunks]
    first = [orjson.loads(data) for data in writes[0]]
    assert [c["choices"][0]["delta"] for c in first][0] == {"role": "assistant", "content": ""}
    assert len(first) == 2 and first[1]["choices"][0]["delta"]["content"].startswith("t0"), writes[0]
    assert writes[-1][-1] == b"[DONE]" and len(writes[-1]) == 3, writes[-1]
    finish, usage = (orjson.loads(data) for data in writes[-1][:2])
    assert finish["choices"][0]["finish_reason"] == "stop" and usage["usage"]["total_tokens"] == 8
    text = "".join(orjson.loads(d)["choices"][0]["delta"].get("content", "") for w in writes for d in w
                   if d != b"[DONE]" and orjson.loads(d)["choices"])
    assert text == "t0 t1 t2 "


@pytest.mark.parametrize("in_conversation", [False, True])
def test_a_stream_that_breaks_raises_in_the_sdk(api: Api, in_conversation: bool) -> None:
    """An upstream error mid-answer ends the stream with an error object (after the role's
    chunk and the text so far), which the SDK raises."""
    headers, cid = new_chat(api)
    got: list[str] = []
    with pytest.raises(openai.APIError, match="error"):
        for chunk in client(api, headers).chat.completions.create(
                model="fake-model", stream=True, messages=[{"role": "user", "content": "#fake tokens=6 error_after=2\nhi"}],
                extra_body={"conversation_id": cid} if in_conversation else None):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(got).startswith("t0 ")


def test_a_turn_reads_its_caller_and_conversation_together_and_still_refuses_what_it_should(api: Api) -> None:
    """Chat, regenerate and the façade read the token's holder and the conversation in one
    query (a login token) or two (an API token): a logged-out token is 401 even on its own
    conversation, someone else's conversation or a deleted one is 404, as a missing one,
    with either kind of token; the owner's own turn goes through with either."""
    from tests.test_tokens import bearer, make_token

    username = api.register()
    login = {"Authorization": f"Bearer {api.login(username)}"}
    cid = api.create_conversation(login, model="fake-model")["conversation_id"]
    api_token = bearer(make_token(api, login)["token"])
    intruder_login = api.new_user()
    intruder_token = bearer(make_token(api, intruder_login)["token"])
    gone = api.create_conversation(login, model="fake-model")["conversation_id"]
    assert api.http.post(f"/api/conversations/del/{gone}", headers=login).status_code == 200

    def turn(headers: dict[str, str], conversation: int, via: str) -> int:
        if via == "facade":
            body = {"model": "fake-model", "conversation_id": conversation,
                    "messages": [{"role": "user", "content": "#fake tokens=1\nhi"}]}
            return api.http.post("/v1/chat/completions", json=body, headers=headers).status_code
        path = f"/api/chat/{conversation}" + ("/regenerate" if via == "regenerate" else "")
        return api.http.post(path, json={"message": "#fake tokens=1\nhi"}, headers=headers).status_code

    for via in ("chat", "regenerate", "facade"):
        assert turn(login, cid, via) == 200, via
        assert turn(api_token, cid, via) == 200, via
        for stranger in (intruder_login, intruder_token):
            assert turn(stranger, cid, via) == turn(stranger, 2**52, via) == 404, via
        assert turn(login, gone, via) == turn(api_token, gone, via) == 404, via
    assert api.http.post("/api/users/logout", headers=login).status_code == 200
    for via in ("chat", "regenerate", "facade"):
        assert turn(login, cid, via) == 401, via
        assert turn(api_token, cid, via) == 200, via  # an API token outlives a login session


def test_an_unknown_or_forged_token_is_401_before_the_body_is_read(api: Api) -> None:
    """Whatever the body, a token that is no one's is refused first: an API token is
    looked up, a login token's signature checked, before a byte of the body is taken."""
    forged = api.new_user()["Authorization"][:-4] + "AAAA"
    for authorization in ("Bearer rtllm_" + "0" * 40, forged):
        for path in ("/v1/chat/completions", "/api/chat/1"):
            response = api.http.post(path, content=b"{not json", headers={"Authorization": authorization,
                                                                          "Content-Type": "application/json"})
            assert response.status_code == 401, (path, authorization[:20], response.text)


def test_errors_come_in_openais_shape(api: Api) -> None:
    headers = api.new_user()
    sdk = client(api, headers)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{api.http.base_url}/v1", api_key="not-a-token", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["message"].startswith("the model") and missing.value.body["type"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="fake-model", messages=[])
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="fake-model", messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "#fake status=503"}])
    assert refused.value.status_code == 502
    stranger_cid = new_chat(api)[1]
    with pytest.raises(openai.NotFoundError):  # someone else's conversation: as if none
        sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}],
                                    extra_body={"conversation_id": stranger_cid})


def test_with_a_conversation_the_answer_is_saved_and_shared(api: Api) -> None:
    headers, cid = new_chat(api)
    token = api.http.post("/api/tokens", headers=headers, json={"name": "sdk"}).json()["token"]
    sdk = client(api, {"Authorization": f"Bearer {token}"})  # an API token is the SDK's key
    with Socket(str(api.http.base_url), cid, headers) as browser:
        assert browser.recv()["event"] == "ready"
        chunks = list(sdk.chat.completions.create(
            model="fake-model", stream=True,
            messages=[{"role": "user", "content": "ignored: the conversation has the history"},
                      {"role": "user", "content": "#fake tokens=3\nfrom a script"}],
            extra_body={"conversation_id": cid}))
        seen = browser.recv_until("full_response")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "t0 t1 t2 " == seen[-1]["data"]  # the script and the browser saw the same answer
    assert [e["data"] for e in seen if e["event"] == "message"] == \
        [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert [m["content"] for m in history(api, headers, cid)] == ["#fake tokens=3\nfrom a script", "t0 t1 t2 "]
    whole = sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "#fake tokens=1\nagain"}],
                                        extra_headers={"X-Conversation-Id": str(cid)})
    assert whole.choices[0].message.content == "t0 " and len(history(api, headers, cid)) == 4
