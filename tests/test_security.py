"""Browser-facing defences: a CORS allowlist (empty by default) and the WebSocket upgrade's
Origin check against cross-site WebSocket hijacking."""
from __future__ import annotations

from typing import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.test_chat import new_chat

APP = "https://app.example.org"
EVIL = "https://evil.example.net"


@pytest.fixture(scope="module")
def allowing(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("cors")
    config = base_config(workdir, "sqlite", upstream)
    config["server"]["allowed_origins"] = [APP]
    server = ServerProcess(write_config(workdir / "config.yaml", config), workdir).start()
    yield server
    server.stop()


def preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(url + "/api/conversations/list", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})


def socket_status(url: str, cid: int, headers: dict[str, str], origin: str | None) -> int:
    """101 if the upgrade is accepted (and the socket says ready), else the HTTP status."""
    ws_url = url.replace("http://", "ws://") + f"/ws/conversations/{cid}"
    try:
        with connect(ws_url, additional_headers=headers, origin=origin, open_timeout=10) as ws:  # type: ignore[arg-type]
            assert '"ready"' in ws.recv(timeout=10)
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_no_cross_site_access_by_default(server: ServerProcess, api: Api) -> None:
    assert "access-control-allow-origin" not in preflight(server.url, EVIL).headers
    headers, cid = new_chat(api)
    response = api.http.get("/api/conversations/list", headers={**headers, "Origin": EVIL})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    assert socket_status(server.url, cid, headers, EVIL) == 403
    assert socket_status(server.url, cid, headers, server.url) == 101  # the page's own origin
    assert socket_status(server.url, cid, headers, None) == 101  # not a browser


def test_allowlisted_origin_may_call_and_connect(allowing: ServerProcess) -> None:
    api = Api(allowing.url)
    allowed = preflight(allowing.url, APP)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = preflight(allowing.url, EVIL)
    assert "access-control-allow-origin" not in refused.headers
    headers, cid = new_chat(api)
    response = api.http.get("/api/conversations/list", headers={**headers, "Origin": APP})
    assert response.headers["access-control-allow-origin"] == APP
    assert socket_status(allowing.url, cid, headers, APP) == 101
    assert socket_status(allowing.url, cid, headers, EVIL) == 403
    assert socket_status(allowing.url, cid, headers, "null") == 403  # sandboxed frames, file://
    api.http.close()
