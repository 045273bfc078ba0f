from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.backends import create_postgres_database, drop_postgres_database, redis_url
from tests.fake_upstream import FakeUpstream
from tests.rediscluster import RedisClusterNodes
from tests.servers import ServerProcess, write_config

PASSWORD = "correct horse battery"
CLUSTER = "cluster:"  # a broker given as "cluster:host:port,host:port,...": a Redis Cluster
PROVIDER_KEY = "sk-provider-key-0000000000"


def base_config(workdir: Path, database: str, upstream: FakeUpstream | None = None,
                broker: str = "memory") -> dict[str, Any]:
    """A test server's config: fast bcrypt, the given database, the fake upstream serving
    "fake-*" models, short keep-alives; everything else default."""
    providers: list[dict[str, Any]] = [{"name": "demo", "kind": "demo", "models": ["demo", "demo-think", "demo-*"],
                                        "delay_ms": 1}]
    if upstream is not None:
        providers.append({"name": "fake", "kind": "openai", "base_url": upstream.base_url,
                          "api_key": PROVIDER_KEY, "models": ["fake-*"], "read_timeout": 3})
        # The same upstream as a raw reasoning model: <think> in content, its thinking sent back.
        providers.append({"name": "raw", "kind": "openai", "base_url": upstream.base_url, "api_key": PROVIDER_KEY,
                          "models": ["raw-*"], "read_timeout": 3, "think_tags": True, "send_reasoning": True})
        # The same upstream behind a provider whose models read no images.
        providers.append({"name": "blind", "kind": "openai", "base_url": upstream.base_url, "api_key": PROVIDER_KEY,
                          "models": ["blind-*"], "read_timeout": 3, "vision": False})
        # Nothing listens on port 9 (discard) here: a provider that cannot be reached.
        providers.append({"name": "dead", "kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                          "models": ["dead-*"], "connect_timeout": 2})
    config: dict[str, Any] = {
        "server": {"shutdown_grace_seconds": 3},
        # The suite registers and chats far more than one person would: limits out of the
        # way here; tests/test_ratelimit.py checks them.
        "limits": {"login_attempts_per_minute_per_username": 0, "login_attempts_per_minute_per_address": 0,
                   "registrations_per_hour_per_address": 0, "messages_per_minute_per_user": 0,
                   "ws_frames_per_10_seconds": 0, "websockets_per_user": 0, "uploads_per_minute_per_user": 0,
                   "imports_per_hour_per_user": 0},
        "auth": {"bcrypt_rounds": 4},
        "jwt": {"secret_file": str(workdir / "jwt.secret")},
        "stream": {"keepalive_seconds": 1, "batch_ms": 0, "ws_auth_timeout_seconds": 1, "subscriber_queue": 50,
                   # Answers as long as the tests that fill TCP buffers need (tests/test_limits.py
                   # tests the cap).
                   "max_answer_chars": 50_000_000},
        # Titles off by default: a `title` event after an answer would interleave with what
        # other tests expect next; tests/test_features.py turns them on.
        "llm": {"default_model": "demo", "providers": providers, "auto_titles": False},
    }
    if broker != "memory":  # a Redis URL or "cluster:" and nodes; each config gets a key prefix of its own
        config["redis"] = {"key_prefix": f"rtllm-test-{uuid.uuid4().hex[:8]}"}
        if broker.startswith(CLUSTER):
            config["redis"]["cluster_nodes"] = broker[len(CLUSTER):].split(",")
        else:
            config["redis"]["url"] = broker
        config["stream"]["lock_ttl_seconds"] = 3
    if database == "sqlite":
        config["sqlite"] = {"path": str(workdir / "chat.db")}
    else:
        config["database"] = {"url": database}
    return config


def own_database(kind: str) -> Iterator[str]:
    """'sqlite', or the URL of a fresh PostgreSQL database, dropped afterwards."""
    if kind == "sqlite":
        yield "sqlite"
        return
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """'sqlite', or the URL of a fresh PostgreSQL database of this session's own."""
    yield from own_database(request.param)


@pytest.fixture(scope="session", params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> str:
    """'memory', or the URL of the Redis the tests use."""
    return "memory" if request.param == "memory" else redis_url()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A Redis Cluster of this session's own (3 masters, 3 replicas), for tests that
    change nothing in it but their own keys; fault tests start their own."""
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    yield nodes
    nodes.stop()


def cluster_broker(nodes: RedisClusterNodes) -> str:
    return CLUSTER + ",".join(nodes.nodes)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def server(database: str, broker: str, upstream: FakeUpstream,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("server")
    config = write_config(workdir / "config.yaml", base_config(workdir, database, upstream, broker))
    process = ServerProcess(config, workdir).start()
    yield process
    process.stop()


class Api:
    """An HTTP client for one running server, with the steps tests repeat."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def register(self, username: str | None = None, password: str = PASSWORD) -> str:
        username = username or f"user_{uuid.uuid4().hex[:10]}"
        response = self.http.post("/api/users/register", json={"username": username, "password": password})
        assert response.status_code == 201, response.text
        return username

    def login(self, username: str, password: str = PASSWORD) -> str:
        response = self.http.post("/api/users/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def new_user(self) -> dict[str, str]:
        """Registers a fresh user and returns the Authorization header of their token."""
        token = self.login(self.register())
        return {"Authorization": f"Bearer {token}"}

    def create_conversation(self, headers: dict[str, str], **body: Any) -> dict[str, Any]:
        response = self.http.post("/api/conversations/create", json=body, headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture
def api(server: ServerProcess) -> Iterator[Api]:
    client = Api(server.url)
    yield client
    client.http.close()
