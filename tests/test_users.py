"""Register, login, me, logout and every way a token can be wrong — through the real server."""
from __future__ import annotations

import base64
import time

import jwt
import orjson
import pytest

from tests.conftest import PASSWORD, Api
from tests.wsclient import Socket


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def test_register_login_me(api: Api) -> None:
    """A registered user logs in and the token names them."""
    response = api.http.post("/api/users/register", json={"username": "alice_" + str(time.time_ns()), "password": PASSWORD})
    assert response.status_code == 201
    assert response.json() == {"message": "User registered successfully"}
    username = api.register()
    token = api.login(username)
    me = api.http.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    body = me.json()
    assert body["username"] == username
    assert isinstance(body["user_id"], int)
    assert abs(body["created_time"] - time.time()) < 60
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) >= {"sub", "exp", "iat", "jti"}
    assert claims["sub"] == str(body["user_id"])


def test_username_taken(api: Api) -> None:
    """A second registration of a name is a 400, not a second account."""
    username = api.register()
    response = api.http.post("/api/users/register", json={"username": username, "password": "another password"})
    assert response.status_code == 400
    assert "taken" in response.json()["error"]
    api.login(username)  # the first password still works


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "bob"},
        {"password": PASSWORD},
        {"username": "", "password": PASSWORD},
        {"username": "bob", "password": ""},
        {"username": 12, "password": PASSWORD},
        {"username": "bob", "password": ["x"]},
        {"username": None, "password": PASSWORD},
        {"username": "has space", "password": PASSWORD},
        {"username": "<script>", "password": PASSWORD},
        {"username": "x" * 65, "password": PASSWORD},
        {"username": "shortpw", "password": "short"},
        {"username": "longpw", "password": "p" * 1025},
    ],
)
def test_register_rejects_bad_input(api: Api, body: dict[str, object]) -> None:
    """Missing, empty, wrong-typed, hostile or oversized fields are a 400 with a message."""
    response = api.http.post("/api/users/register", json=body)
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["error"], str)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"text"', b"null", b"\xff\xfe", b'{"username": "a", "password": 1e999}'])
def test_malformed_json_is_400(api: Api, raw: bytes) -> None:
    """Bodies that are not a JSON object never reach a 500."""
    for path in ("/api/users/register", "/api/users/login"):
        response = api.http.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, raw, response.text)
        assert "error" in response.json()


def test_oversized_body_is_413(api: Api) -> None:
    """A body over server.max_body_bytes is refused with 413, declared or streamed."""
    big = b'{"username": "' + b"a" * 2_000_000 + b'", "password": "x"}'
    response = api.http.post("/api/users/register", content=big)
    assert response.status_code == 413
    assert "error" in response.json()

    def chunks():  # no Content-Length: the limit must hold while reading
        yield b'{"username": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    response = api.http.post("/api/users/register", content=chunks())
    assert response.status_code == 413


def test_login_failures_look_alike(api: Api) -> None:
    """Unknown user and wrong password get the same 401 and the same message."""
    username = api.register()
    wrong = api.http.post("/api/users/login", json={"username": username, "password": "not the password"})
    unknown = api.http.post("/api/users/login", json={"username": "nobody_" + username, "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def _token_cases(api: Api) -> dict[str, str]:
    username = api.register()
    good = api.login(username)
    header, payload, signature = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    expired = dict(claims, exp=int(time.time()) - 10, iat=int(time.time()) - 100)
    return {
        "malformed": "not-a-jwt",
        "garbage segments": "a.b.c",
        "wrong signature": f"{header}.{payload}.{signature[::-1]}",
        "signed with another key": jwt.encode(claims, "another secret that is long enough!!", algorithm="HS256"),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg HS512": jwt.encode(claims, "x" * 64, algorithm="HS512"),
        "expired": f"{header}.{_b64(expired)}.{signature}",
        "no jti": jwt.encode({k: v for k, v in claims.items() if k != "jti"}, "k" * 40, algorithm="HS256"),
    }


def test_bad_tokens_are_401(api: Api) -> None:
    """Missing, malformed, forged, alg:none and expired tokens are all a 401 on every protected route."""
    cases = _token_cases(api)
    routes = [
        ("GET", "/api/users/me"),
        ("GET", "/api/conversations/list"),
        ("POST", "/api/conversations/create"),
        ("GET", "/api/conversations/history/1"),
        ("POST", "/api/conversations/del/1"),
        ("POST", "/api/users/logout"),
        ("GET", "/api/models"),
    ]
    for method, path in routes:
        response = api.http.request(method, path)
        assert response.status_code == 401, (method, path)
        response = api.http.request(method, path, headers={"Authorization": "Basic abc"})
        assert response.status_code == 401, (method, path)
        for name, token in cases.items():
            response = api.http.request(method, path, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (method, path, name, response.text)
            assert "error" in response.json()


def test_expired_token_signed_correctly(server, api: Api) -> None:
    """A token with a valid signature but past its exp is refused."""
    secret = (server.workdir / "jwt.secret").read_text().strip()
    me = api.http.get("/api/users/me", headers=api.new_user()).json()
    now = int(time.time())
    token = jwt.encode({"sub": str(me["user_id"]), "iat": now - 100, "exp": now - 1, "jti": "x1"}, secret, algorithm="HS256")
    assert api.http.get("/api/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    fresh = jwt.encode({"sub": str(me["user_id"]), "iat": now, "exp": now + 60, "jti": "x2"}, secret, algorithm="HS256")
    assert api.http.get("/api/users/me", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


@pytest.mark.parametrize("sub", [str(2**63), str(2**64 + 5), str(2**53), "0", "-1", " 7", "+7", "7_0", "0x10",
                                 "1e3", "٣", 7, None, ["1"]])
def test_a_correctly_signed_token_with_a_sub_out_of_range_is_401(server, api: Api, sub: object) -> None:
    """A `sub` that is not an id this server issued (too large for the database's integer,
    or a number int() would also take) is a 401 on HTTP and on a socket, never a 500."""
    secret = (server.workdir / "jwt.secret").read_text().strip()
    now = int(time.time())
    token = jwt.encode({"sub": sub, "iat": now, "exp": now + 60, "jti": "out-of-range"}, secret, algorithm="HS256")
    logged = len(server.log())
    for path in ("/api/users/me", "/api/conversations/list"):
        response = api.http.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (path, response.text)
    with Socket(server.url, 1, {"Authorization": f"Bearer {token}"}) as socket:
        assert socket.close_code() == 4401
    assert "Traceback" not in server.log()[logged:]


def test_logout_revokes_only_that_token(api: Api) -> None:
    """After logout the token is refused; another session of the same user keeps working."""
    username = api.register()
    first = {"Authorization": f"Bearer {api.login(username)}"}
    second = {"Authorization": f"Bearer {api.login(username)}"}
    assert api.http.post("/api/users/logout", headers=first).json() == {"message": "Logged out successfully"}
    assert api.http.get("/api/users/me", headers=first).status_code == 401
    assert api.http.post("/api/users/logout", headers=first).status_code == 401
    assert api.http.get("/api/users/me", headers=second).status_code == 200


def test_secret_file_is_private(server) -> None:
    """The generated JWT secret is kept beside the data, readable by the owner only."""
    path = server.workdir / "jwt.secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_text().strip()) >= 32
