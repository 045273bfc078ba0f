"""POST /api/import/chatgpt against the running server: a ChatGPT data export (its
conversations.json, or the export's .zip) becomes conversations of the caller's, branches
and the active one kept; malformed exports are 400 and write nothing."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import Api, base_config
from tests.servers import ServerProcess, write_config


def node(key: str, parent: str | None, children: list[str], role: str | None = None, text: str = "",
         t: float | None = None, **extra: Any) -> dict[str, Any]:
    message = None
    if role is not None:
        message = {"id": key, "author": {"role": role}, "create_time": t,
                   "content": {"content_type": extra.pop("content_type", "text"), "parts": extra.pop("parts", [text])},
                   "metadata": extra.pop("metadata", {}), "recipient": extra.pop("recipient", "all")}
    return {"id": key, "message": message, "parent": parent, "children": children}


def branched() -> dict[str, Any]:
    """A question answered twice (a regenerated answer), the older branch active and going on
    through a tool call; a hidden system message and the tool's part are left out."""
    mapping = [
        node("root", None, ["sys"]),
        node("sys", "root", ["u1"], "system", "", 99.0, metadata={"is_visually_hidden_from_conversation": True}),
        node("u1", "sys", ["a1", "a1b"], "user", "What is 2+2?", 100.5),
        # The regenerated answer first in the mapping: siblings are ordered by time, not by it.
        node("a1b", "u1", [], "assistant", "Four.", 110.0),
        node("a1", "u1", ["u2"], "assistant", "4", 101.0),
        node("u2", "a1", ["call"], "user", "And 3+3?", 102.0),
        node("call", "u2", ["out"], "assistant", "print(3+3)", 103.0, content_type="code", recipient="python"),
        node("out", "call", ["a2"], "tool", "6", 104.0, content_type="execution_output"),
        node("a2", "out", [], "assistant", "6, by the tool", 105.0),
    ]
    return {"title": "Arithmetic", "create_time": 1700000000.25, "update_time": 1700000100.0,
            "mapping": {n["id"]: n for n in mapping}, "current_node": "a2", "id": "c-1"}


def linear(title: str, *texts: str) -> dict[str, Any]:
    keys = [f"{title}-{i}" for i in range(len(texts))]
    mapping = {"root": node("root", None, keys[:1])}
    for i, (key, text) in enumerate(zip(keys, texts, strict=True)):
        mapping[key] = node(key, keys[i - 1] if i else "root", keys[i + 1:i + 2], ("user", "assistant")[i % 2], text,
                            1700000000.0 + i)
    return {"title": title, "create_time": 1700000000.0, "mapping": mapping, "current_node": keys[-1]}


def upload(api: Api, headers: dict[str, str], body: bytes, name: str = "conversations.json"):
    return api.http.post("/api/import/chatgpt", headers=headers, files={"file": (name, body)})


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def conversation_ids(api: Api, headers: dict[str, str]) -> list[int]:
    response = api.http.get("/api/conversations/list", headers=headers)
    assert response.status_code == 200, response.text
    return sorted(c["conversation_id"] for c in response.json())


@pytest.mark.parametrize("packing", ["json", "zip"])
def test_branched_export_keeps_both_branches_and_the_active_one(api: Api, packing: str) -> None:
    headers = api.new_user()
    export = json.dumps([branched(), linear("Second", "hello", "hi there")]).encode()
    body = zipped({"conversations.json": export, "chat.html": b"<html></html>"}) if packing == "zip" else export
    response = upload(api, headers, body, "export.zip" if packing == "zip" else "conversations.json")
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["imported"] == 2 and len(result["conversation_ids"]) == 2
    assert conversation_ids(api, headers) == sorted(result["conversation_ids"])
    first, second = result["conversation_ids"]

    history = api.http.get(f"/api/conversations/history/{first}", headers=headers).json()
    assert history["title"] == "Arithmetic"
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("user", "What is 2+2?"), ("assistant", "4"), ("user", "And 3+3?"), ("assistant", "6, by the tool")]
    question, answer = history["messages"][:2]
    assert question["parent_id"] is None and answer["parent_id"] == question["message_id"]
    assert len(answer["sibling_ids"]) == 2  # the regenerated answer is the other version

    export_json = api.http.get(f"/api/conversations/export/{first}?format=json", headers=headers).json()
    by_id = {m["message_id"]: m for m in export_json["messages"]}
    assert len(by_id) == 5  # system, code and tool output left out
    other = next(m for m in by_id.values() if m["content"] == "Four.")
    assert other["parent_id"] == question["message_id"]
    assert by_id[export_json["active_leaf_id"]]["content"] == "6, by the tool"  # current_node, not the newest
    assert other["message_id"] > answer["message_id"]  # the older version first
    assert question["created_time"] == 100  # the message's own time
    created = api.http.get("/api/conversations/list", headers=headers).json()
    assert {c["conversation_id"]: c["created_time"] for c in created}[first] == 1700000000

    # The other version can be made active, as with any conversation's branches.
    switched = api.http.post(f"/api/conversations/branch/{first}", headers=headers,
                             json={"message_id": other["message_id"]})
    assert switched.status_code == 200, switched.text
    assert [m["content"] for m in switched.json()["messages"]] == ["What is 2+2?", "Four."]

    second_history = api.http.get(f"/api/conversations/history/{second}", headers=headers).json()
    assert [m["content"] for m in second_history["messages"]] == ["hello", "hi there"]


def test_an_imported_conversation_goes_on_like_any_other(api: Api) -> None:
    headers = api.new_user()
    response = upload(api, headers, json.dumps([linear("Go on", "hello", "hi")]).encode())
    assert response.status_code == 201, response.text
    [cid] = response.json()["conversation_ids"]
    chat = api.http.post(f"/api/chat/{cid}", headers=headers, json={"message": "and now?"})
    assert chat.status_code == 200, chat.text
    history = api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "user", "assistant"]
    assert history["messages"][2]["parent_id"] == history["messages"][1]["message_id"]


def test_imported_conversations_are_the_callers_alone(api: Api) -> None:
    owner, other = api.new_user(), api.new_user()
    response = upload(api, owner, json.dumps([linear("Mine", "secret question", "secret answer")]).encode())
    [cid] = response.json()["conversation_ids"]
    assert api.http.get(f"/api/conversations/history/{cid}", headers=other).status_code == 404
    assert conversation_ids(api, other) == []
    assert upload(api, {}, b"[]").status_code == 401


def test_an_empty_export_imports_nothing(api: Api) -> None:
    headers = api.new_user()
    for body in (b"[]", b"\xef\xbb\xbf" + b" " * 1000 + b"[ ]"):  # a byte order mark and blanks are fine
        response = upload(api, headers, body)
        assert response.status_code == 201, response.text
        assert response.json() == {"imported": 0, "conversation_ids": []}


def test_what_chatgpt_shows_as_one_turn_is_one_message(api: Api) -> None:
    """An answer split by a tool call is one answer; a question of images alone is kept as
    "[image]" (its answer stays an answer to a question); a conversation with no message
    kept, and a node keyed "", are no trouble."""
    image = {"content_type": "image_asset_pointer", "asset_pointer": "file-service://x"}
    split = {"title": "split", "create_time": 1700000000.0, "current_node": "a2", "mapping": {n["id"]: n for n in [
        node("", None, ["u1"]),
        node("u1", "", ["a1"], "user", "compute 3+3", 1.0),
        node("a1", "u1", ["call"], "assistant", "Let me compute.", 2.0),
        node("call", "a1", ["out"], "assistant", "3+3", 3.0, content_type="code", recipient="python"),
        node("out", "call", ["a2"], "tool", "6", 4.0, content_type="execution_output"),
        node("a2", "out", ["u2"], "assistant", "The answer is 6.", 5.0),
        node("u2", "a2", ["a3"], "user", "", 6.0, content_type="multimodal_text", parts=[image]),
        node("a3", "u2", [], "assistant", "A nice picture.", 7.0)]}}
    empty = {"title": "nothing kept", "mapping": {"root": node("root", None, [])}}
    # Two questions around a tool's turn that said nothing stay two questions.
    questions = {"title": "two", "create_time": 1700000000.0, "current_node": "a", "mapping": {n["id"]: n for n in [
        node("u1", None, ["call"], "user", "draw a cat", 1.0),
        node("call", "u1", ["out"], "assistant", "{}", 2.0, content_type="code", recipient="dalle.text2im"),
        node("out", "call", ["u2"], "tool", "", 3.0, content_type="multimodal_text", parts=[image]),
        node("u2", "out", ["a"], "user", "now a dog", 4.0),
        node("a", "u2", [], "assistant", "ok", 5.0)]}}
    headers = api.new_user()
    response = upload(api, headers, json.dumps([split, empty, questions]).encode())
    assert response.status_code == 201, response.text
    cid, two = response.json()["conversation_ids"]
    history = api.http.get(f"/api/conversations/history/{two}", headers=headers).json()
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("user", "draw a cat"), ("user", "now a dog"), ("assistant", "ok")]
    history = api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("user", "compute 3+3"), ("assistant", "Let me compute.\n\nThe answer is 6."), ("user", "[image]"),
        ("assistant", "A nice picture.")]


MALFORMED = {
    "not json": b"this is not json",
    "an object, not an array": b'{"title": "x", "mapping": {}}',
    "cut short": json.dumps([linear("a", "x", "y")]).encode()[:-20],
    "a conversation without a mapping": b'[{"title": "x"}]',
    "a mapping that is a list": b'[{"title": "x", "mapping": []}]',
    "a node that is a string": b'[{"title": "x", "mapping": {"a": "b"}}]',
    "a cycle": json.dumps([{"title": "x", "mapping": {
        "a": {"id": "a", "parent": "b", "children": ["b"], "message": None},
        "b": {"id": "b", "parent": "a", "children": ["a"], "message": None}}}]).encode(),
    "a zip without conversations.json": zipped({"chat.html": b"<html></html>"}),
    "a broken zip": b"PK\x03\x04" + b"\x00" * 100,
    "binary": bytes(range(256)) * 4,
    "nested 100,000 deep": b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]",
    "objects nested deep": b"[" + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"]",
    "a reversed surrogate pair": b'[{"title": "\\ude00\\ud83d", "mapping": {}}]',
    "invalid UTF-8": b'[{"title": "\xed\xa0\x80\xc0\x80", "mapping": {}}]',
    "a number for a conversation": b"[1]",
    "more after the array": b'[{"title": "x", "mapping": {}}] and more',
    "two arrays": b'[{"title": "x", "mapping": {}}][]',
    "a corrupted deflate member": None,  # made below
    "an lzma member": None,
}


def corrupted_zip() -> bytes:
    good = zipped({"conversations.json": json.dumps([linear("a", "x" * 2000, "y")]).encode()})
    middle = len(good) // 2
    return good[:middle] + bytes(b ^ 0x5A for b in good[middle:middle + 40]) + good[middle + 40:]


def lzma_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_LZMA) as archive:
        archive.writestr("conversations.json", json.dumps([linear("a", "x", "y")]))
    return buffer.getvalue()


MALFORMED["a corrupted deflate member"] = corrupted_zip()
MALFORMED["an lzma member"] = lzma_zip()


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_exports_are_400_and_write_nothing(api: Api, body: bytes) -> None:
    headers = api.new_user()
    # The good conversation before the bad one is not kept either: all or nothing.
    if body.startswith(b"[{"):
        body = b"[" + json.dumps(linear("good", "a", "b")).encode() + b"," + body[1:]
    response = upload(api, headers, body)
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    assert conversation_ids(api, headers) == []


def test_request_shapes_that_are_no_export(api: Api) -> None:
    headers = api.new_user()
    as_json = api.http.post("/api/import/chatgpt", headers=headers, json=[])
    assert as_json.status_code == 415
    wrong_field = api.http.post("/api/import/chatgpt", headers=headers, files={"upload": ("c.json", b"[]")})
    assert wrong_field.status_code == 400
    assert conversation_ids(api, headers) == []


def test_hostile_content_is_kept_as_text(api: Api) -> None:
    headers = api.new_user()
    hostile = '<img src=x onerror="alert(1)"> [x](javascript:alert(1)) \x00 \ud800 end'
    body = json.dumps([linear("<script>alert(1)</script>", hostile, "ok")]).encode()
    response = upload(api, headers, body)
    assert response.status_code == 201, response.text
    [cid] = response.json()["conversation_ids"]
    history = api.http.get(f"/api/conversations/history/{cid}", headers=headers).json()
    assert history["title"] == "<script>alert(1)</script>"
    # Kept as text; what no database can hold replaced, not a 500: a NUL by U+FFFD (ours), a
    # lone surrogate by whatever the JSON parser puts there ("?" from yajl).
    content = history["messages"][0]["content"]
    assert content.startswith('<img src=x onerror="alert(1)"> [x](javascript:alert(1)) \ufffd ')
    assert content.endswith(" end") and len(content) == len(hostile)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[ServerProcess]:
    config = base_config(tmp_path, "sqlite")
    config["limits"].update(max_import_bytes=20_000, max_import_conversations=12, imports_per_hour_per_user=4)
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    yield server
    server.stop()


def test_bounds_on_the_upload_and_on_what_a_zip_unpacks_to(small: ServerProcess) -> None:
    api = Api(small.url)
    headers = api.new_user()
    big = json.dumps([linear(f"c{i}", "x" * 500, "y" * 500) for i in range(30)]).encode()
    assert len(big) > 20_000
    assert upload(api, headers, big).status_code == 413
    # Under the bound as a .zip, past 8 times it unpacked: refused as it unpacks, not after.
    bomb = b"[" + b" " * 400_000 + b"]"
    packed = zipped({"conversations.json": bomb})
    assert len(packed) < 20_000
    response = upload(api, headers, packed, "export.zip")
    assert response.status_code == 413, response.text
    assert "unpacks" in response.json()["error"]
    # Within both bounds, the same conversations import.
    fits = json.dumps([linear(f"c{i}", "x" * 500, "y" * 500) for i in range(10)]).encode()
    response = upload(api, headers, zipped({"conversations.json": fits}), "export.zip")
    assert response.status_code == 201, response.text
    assert response.json()["imported"] == 10
    assert conversation_ids(api, headers) == sorted(response.json()["conversation_ids"])
    # More conversations than limits.max_import_conversations: none of them.
    many = json.dumps([linear(f"c{i}", "x", "y") for i in range(13)]).encode()
    response = upload(api, headers, many)
    assert response.status_code == 413, response.text
    assert "at most 12 conversations" in response.json()["error"]
    assert len(conversation_ids(api, headers)) == 10
    # The fifth import within the hour (limits.imports_per_hour_per_user: 4).
    response = upload(api, headers, b"[]")
    assert response.status_code == 429, response.text
