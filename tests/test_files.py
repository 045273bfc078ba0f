"""Attachments (DESIGN.md): uploads typed from their bytes and bounded while they stream,
downloads to the owner only, files carried by chat messages into the upstream request,
history, events and export, and their lifetimes — on every database and broker."""
from __future__ import annotations

import base64
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.filesamples import gif_header, jpeg_header, pdf, png, webp_header
from tests.servers import ServerProcess, write_config
from tests.sse import parse_stream
from tests.test_chat import history, new_chat
from tests.wsclient import Socket

MiB = 1024 * 1024


def upload(api: Api, headers: dict[str, str], data: bytes, name: str = "file.bin",
           declared: str = "application/octet-stream") -> httpx.Response:
    return api.http.post("/api/files", headers=headers, files={"file": (name, data, declared)})


def uploaded(api: Api, headers: dict[str, str], data: bytes, name: str) -> dict[str, Any]:
    response = upload(api, headers, data, name)
    assert response.status_code == 201, response.text
    return dict(response.json())


def send(api: Api, headers: dict[str, str], cid: int, text: str, attachments: Any, **extra: Any) -> httpx.Response:
    return api.http.post(f"/api/chat/{cid}", headers=headers,
                         json={"message": text, "attachments": attachments, **extra})


def last_request(upstream: FakeUpstream, marker: str) -> dict[str, Any]:
    def text_of(message: dict[str, Any]) -> str:
        content = message["content"]
        return content if isinstance(content, str) else content[0]["text"]
    found = [r.body for r in upstream.received if marker in text_of(r.body["messages"][-1])]
    assert found, f"nothing went upstream with {marker!r}"
    return found[-1]


@pytest.mark.parametrize("data, name, content_type", [
    (png(), "photo.png", "image/png"),
    (jpeg_header(), "photo.jpg", "image/jpeg"),
    (gif_header(), "anim.gif", "image/gif"),
    (webp_header(), "pic.webp", "image/webp"),
    (pdf(), "paper.pdf", "application/pdf"),
    ("# Notes\n\nÜmlauts and emoji 😀\n".encode(), "notes.md", "text/markdown"),
    (b"a,b\n1,2\n", "table.csv", "text/csv"),
    (b'{"k": 1}', "data.json", "application/json"),
    (b"def f():\n    return 1\n", "code.py", "text/plain"),
])
def test_each_accepted_type_uploads_and_downloads(api: Api, data: bytes, name: str, content_type: str) -> None:
    headers = api.new_user()
    stored = uploaded(api, headers, data, name)
    assert stored["file_id"].startswith("file_") and stored["name"] == name
    assert (stored["content_type"], stored["size"]) == (content_type, len(data))
    assert isinstance(stored["created_time"], int)
    response = api.http.get(f"/api/files/{stored['file_id']}", headers=headers)
    assert response.status_code == 200 and response.content == data
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in response.headers["content-security-policy"]
    served = response.headers["content-type"]
    assert served == (content_type if content_type.startswith(("image/", "application/pdf"))
                      else "text/plain; charset=utf-8")  # text never as HTML, JSON or anything a browser runs


@pytest.mark.parametrize("data, name", [
    (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(range(256)), "setup.png"),  # an .exe named .png
    (b"\x7fELF\x02\x01\x01" + b"\x00" * 40, "notes.txt"),
    (b"\xff\xfe\x00\x00 not UTF-8 \xc3\x28", "latin.txt"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'\x00>", "image.svg"),
    (bytes(range(256)) * 4, "random.bin"),
    (b"%PDF-1.7\n" + bytes(range(256)) * 8, "broken.pdf"),  # a PDF its reader cannot read
])
def test_anything_else_is_415(api: Api, data: bytes, name: str) -> None:
    response = upload(api, api.new_user(), data, name, "image/png")
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type", response.text


def test_the_type_comes_from_the_bytes(api: Api) -> None:
    headers = api.new_user()
    assert uploaded(api, headers, png(), "notes.txt")["content_type"] == "image/png"  # a PNG named .txt is a PNG
    assert uploaded(api, headers, b"just words", "photo.png")["content_type"] == "text/plain"
    html = uploaded(api, headers, b"<script>alert(1)</script>", "page.html")
    assert html["content_type"] == "text/plain"
    served = api.http.get(f"/api/files/{html['file_id']}", headers=headers)
    assert served.headers["content-type"] == "text/plain; charset=utf-8"
    raw = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="..\\..\\etc/pa\x01ss\x7fwd.txt"\r\n'
           b"\r\nx\r\n--b--\r\n")  # as a client that does not escape the name sends it
    named = api.http.post("/api/files", headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
                          content=raw)
    assert named.status_code == 201 and named.json()["name"] == "passwd.txt"  # no directories, no control characters


def test_uploads_refuse_bad_forms(api: Api) -> None:
    headers = api.new_user()
    as_json = api.http.post("/api/files", headers=headers, json={"file": "x"})
    assert as_json.status_code == 415
    no_file = api.http.post("/api/files", headers=headers, data={"other": "x"}, files={"x": ("a.txt", b"a")})
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]
    broken = api.http.post("/api/files", headers={**headers, "Content-Type": "multipart/form-data; boundary=zz"},
                           content=b"--zz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc")
    assert broken.status_code in (400, 415), broken.text  # cut short: never stored, never a 500
    no_boundary = api.http.post("/api/files", headers={**headers, "Content-Type": "multipart/form-data"},
                                content=b"abc")
    assert no_boundary.status_code == 400
    assert api.http.post("/api/files", files={"file": ("a.txt", b"a")}).status_code == 401


def test_size_is_bounded_while_the_body_streams(api: Api) -> None:
    headers = api.new_user()
    exactly = b"\x89PNG\r\n\x1a\n" + b"\x00" * (10 * MiB - 8)  # 10 MiB: the limit itself is taken
    stored = uploaded(api, headers, exactly, "big.png")
    assert stored["size"] == 10 * MiB
    assert api.http.get(f"/api/files/{stored['file_id']}", headers=headers).content == exactly
    over = upload(api, headers, exactly + b"\x00", "big.png")
    assert over.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bound is met while reading
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n\r\n"
        for _ in range(64):
            yield b"a" * (256 * 1024)  # 16 MiB in all, past the bound after 10
        yield b"\r\n--b--\r\n"

    chunked = api.http.post("/api/files", headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
                            content=chunks())
    assert chunked.status_code == 413
    port = httpx.URL(str(api.http.base_url)).port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # 50 MiB announced, 4 bytes sent
        raw.sendall(f"POST /api/files HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n"
                    f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {50 * MiB}\r\n\r\n--b\r".encode())
        assert raw.recv(65536).startswith(b"HTTP/1.1 413 ")  # refused on the header, not waiting for the body


def test_files_are_their_owners_alone(api: Api) -> None:
    owner, stranger = api.new_user(), api.new_user()
    mine = uploaded(api, owner, png(), "mine.png")["file_id"]
    assert api.http.get(f"/api/files/{mine}", headers=stranger).status_code == 404
    assert api.http.get("/api/files/file_doesnotexist", headers=owner).status_code == 404
    assert api.http.get("/api/files/..%2F..%2Fetc", headers=owner).status_code == 404
    assert api.http.get(f"/api/files/{mine}").status_code == 401
    stranger_cid = new_chat(api)[1]
    headers, cid = new_chat(api)
    refused = send(api, headers, cid, "look", [mine])  # not this user's file
    assert refused.status_code == 400 and "of yours" in refused.json()["error"]
    assert history(api, headers, cid) == []
    with Socket(str(api.http.base_url), cid, headers) as socket:
        assert socket.recv()["event"] == "ready"
        socket.send({"type": "message", "content": "look", "attachments": [mine]})
        error = socket.recv()
        assert error["event"] == "error" and "of yours" in error["data"]
    assert stranger_cid != cid


@pytest.mark.parametrize("attachments, fragment", [
    ("file_x", "list of file ids"),
    ([1, 2], "list of file ids"),
    (["not-a-file-id"], "list of file ids"),
    ([{"file_id": "file_x"}], "list of file ids"),
    ([f"file_{i}" for i in range(9)], "at most 8"),
    (["file_same", "file_same"], "twice"),
])
def test_bad_attachments_are_400(api: Api, attachments: Any, fragment: str) -> None:
    headers, cid = new_chat(api)
    response = send(api, headers, cid, "x", attachments)
    assert response.status_code == 400 and fragment in response.json()["error"], response.text
    assert history(api, headers, cid) == []


def test_the_upstream_gets_content_parts(api: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(api)
    image = png(4, 4)
    files = [uploaded(api, headers, image, "dot.png"), uploaded(api, headers, b"line one\nline two", "notes.txt"),
             uploaded(api, headers, pdf("Quarterly figures"), "report.pdf")]
    marker = f"#fake tokens=2\nwhat is in these? {uuid.uuid4().hex[:6]}"
    response = send(api, headers, cid, marker, [f["file_id"] for f in files])
    assert response.status_code == 200, response.text
    events = parse_stream(response.content)
    assert events[0]["event"] == "user_message"
    assert events[0]["attachments"] == [{k: f[k] for k in ("file_id", "name", "content_type", "size")} for f in files]
    content = last_request(upstream, marker)["messages"][-1]["content"]
    assert content == [
        {"type": "text", "text": marker},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(image).decode()}},
        {"type": "text", "text": "notes.txt:\nline one\nline two"},
        {"type": "text", "text": "report.pdf:\nQuarterly figures"},
    ]
    shown = history(api, headers, cid)
    assert shown[0]["attachments"] == events[0]["attachments"] and "attachments" not in shown[1]
    # The next turn sends them again, with the message that carries them.
    follow = f"#fake tokens=1\nand now? {uuid.uuid4().hex[:6]}"
    assert send(api, headers, cid, follow, None).status_code == 200
    sent = last_request(upstream, follow)["messages"]
    assert sent[1]["content"] == content and sent[-1]["content"] == follow


def test_a_model_that_reads_no_images_refuses_them_before_saving(api: Api) -> None:
    headers, cid = new_chat(api, model="blind-model")
    image = uploaded(api, headers, png(), "a.png")["file_id"]
    refused = send(api, headers, cid, "see?", [image])
    assert refused.status_code == 400 and "does not read images" in refused.json()["error"]
    assert history(api, headers, cid) == []
    text = uploaded(api, headers, b"words", "a.txt")["file_id"]
    assert send(api, headers, cid, "#fake tokens=1\nread", [text]).status_code == 200  # text is fine


def test_the_demo_model_describes_each_attachment(api: Api) -> None:
    headers, cid = new_chat(api, model="demo")
    files = [uploaded(api, headers, png(3, 2), "tiny.png")["file_id"], uploaded(api, headers, b"hello", "a.txt")["file_id"]]
    events = parse_stream(send(api, headers, cid, "what did I send?", files).content)
    answer = events[-1]["data"]
    assert "tiny.png (image/png, " in answer and "3×2 pixels" in answer
    assert "a.txt (text/plain, 5 bytes, 5 characters of text)" in answer


def test_edit_keeps_or_replaces_the_attachments(api: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(api)
    first = uploaded(api, headers, b"first file", "one.txt")
    second = uploaded(api, headers, b"second file", "two.txt")
    assert send(api, headers, cid, "#fake tokens=1\nq", [first["file_id"]]).status_code == 200
    question = history(api, headers, cid)[0]
    kept = send(api, headers, cid, "#fake tokens=1\nq, kept", None, edit_message_id=question["message_id"])
    assert kept.status_code == 200
    assert [a["file_id"] for a in history(api, headers, cid)[0]["attachments"]] == [first["file_id"]]
    edited = history(api, headers, cid)[0]
    replaced = send(api, headers, cid, "#fake tokens=1\nq, replaced", [second["file_id"]],
                    edit_message_id=edited["message_id"])
    assert replaced.status_code == 200
    assert [a["file_id"] for a in history(api, headers, cid)[0]["attachments"]] == [second["file_id"]]
    emptied = send(api, headers, cid, "#fake tokens=1\nq, bare", [], edit_message_id=history(api, headers, cid)[0]["message_id"])
    assert emptied.status_code == 200 and history(api, headers, cid)[0]["attachments"] == []


def test_export_has_the_attachments(api: Api) -> None:
    headers, cid = new_chat(api)
    file = uploaded(api, headers, b"data", "we[ird] name.txt")
    assert send(api, headers, cid, "#fake tokens=1\nq", [file["file_id"]]).status_code == 200
    document = api.http.get(f"/api/conversations/export/{cid}", headers=headers).json()
    (attached,) = document["messages"][0]["attachments"]
    assert attached["path"] == f"/api/files/{file['file_id']}" and attached["name"] == "we[ird] name.txt"
    markdown = api.http.get(f"/api/conversations/export/{cid}", params={"format": "markdown"}, headers=headers).text
    assert f"[we\\[ird\\] name.txt](/api/files/{file['file_id']})" in markdown


def test_deleting_a_conversation_deletes_the_files_only_it_carries(api: Api) -> None:
    headers, cid = new_chat(api)
    only_here = uploaded(api, headers, b"only here", "a.txt")["file_id"]
    shared = uploaded(api, headers, b"shared", "b.txt")["file_id"]
    unattached = uploaded(api, headers, b"waiting", "c.txt")["file_id"]
    assert send(api, headers, cid, "#fake tokens=1\nq", [only_here, shared]).status_code == 200
    other = api.http.post(f"/api/conversations/fork/{cid}", headers=headers, json={"message_id": 1}).json()
    assert history(api, headers, other["conversation_id"])[0]["attachments"] == history(api, headers, cid)[0]["attachments"]
    third = api.create_conversation(headers, model="fake-model")["conversation_id"]
    assert send(api, headers, third, "#fake tokens=1\nq", [shared]).status_code == 200
    assert api.http.post(f"/api/conversations/del/{cid}", headers=headers).status_code == 200
    # The fork still carries both: nothing went.
    for file_id in (only_here, shared, unattached):
        assert api.http.get(f"/api/files/{file_id}", headers=headers).status_code == 200
    assert api.http.post(f"/api/conversations/del/{other['conversation_id']}", headers=headers).status_code == 200
    assert api.http.get(f"/api/files/{only_here}", headers=headers).status_code == 404  # carried by none now
    assert api.http.get(f"/api/files/{shared}", headers=headers).status_code == 200  # the third carries it
    assert api.http.get(f"/api/files/{unattached}", headers=headers).status_code == 200  # not attached: its own clock
    assert history(api, headers, third)[0]["attachments"][0]["file_id"] == shared


# -- limits, lifetimes and restarts: a server configured for them ------------------------

@pytest.fixture
def strict(database: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[ServerProcess]:
    config = base_config(tmp_path, database, upstream)
    config["limits"].update(max_file_bytes=2048, max_bytes_per_user=5000, attachments_per_message=2,
                            uploads_per_minute_per_user=6, unattached_file_ttl_seconds=1)
    server = ServerProcess(write_config(tmp_path / "config.yaml", config), tmp_path).start()
    yield server
    server.stop()


def test_limits_expiry_and_restart(strict: ServerProcess) -> None:
    api = Api(strict.url)
    headers, cid = new_chat(api)
    assert upload(api, headers, b"x" * 2049, "a.txt").status_code == 413  # the file
    kept = [uploaded(api, headers, b"y" * 2000, f"{i}.txt")["file_id"] for i in range(2)]
    over = upload(api, headers, b"z" * 1001, "c.txt")
    assert over.status_code == 413 and "more than 5000 bytes" in over.json()["error"]  # the user's total
    too_many = send(api, headers, cid, "q", [*kept, "file_third"])
    assert too_many.status_code == 400 and "at most 2" in too_many.json()["error"]
    assert send(api, headers, cid, "#fake tokens=1\nq", kept[:1]).status_code == 200
    for _ in range(2):  # six uploads a minute: four were made above (two refused, they count too)
        assert upload(api, headers, b"w", "w.txt").status_code == 201
    limited = upload(api, headers, b"w", "w.txt")
    assert limited.status_code == 429 and "retry-after" in limited.headers
    # The file no message carries goes after its second; the attached one stays.
    deadline = time.monotonic() + 10
    while api.http.get(f"/api/files/{kept[1]}", headers=headers).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert api.http.get(f"/api/files/{kept[1]}", headers=headers).status_code == 404
    assert api.http.get(f"/api/files/{kept[0]}", headers=headers).status_code == 200
    strict.stop()
    strict.start()
    restarted = Api(strict.url)
    assert restarted.http.get(f"/api/files/{kept[0]}", headers=headers).content == b"y" * 2000
    assert history(restarted, headers, cid)[0]["attachments"][0]["file_id"] == kept[0]
