"""Configuration: the schema, environment overrides, and one-line errors from the real command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from realtime_llm.config import ConfigError
from realtime_llm.configfile import load_settings

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_yaml_loads() -> None:
    """The config.yaml at the top of the repo is valid and matches the embedded defaults' shape."""
    settings = load_settings(str(REPO / "config.yaml"), environ={})
    assert settings.llm.default_model == "demo"
    assert settings.server.port == 8080
    assert not settings.redis.enabled
    assert settings.uses_sqlite


def test_no_file_means_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, environ={})
    assert settings.database_url == "sqlite:///./llm_backend.db"
    assert settings.llm.default_model == "demo"


def test_original_port_string_is_accepted(tmp_path: Path) -> None:
    """The original wrote port: "8080" as a string; it keeps its meaning."""
    path = tmp_path / "c.yaml"
    path.write_text('server:\n  port: "9090"\n')
    assert load_settings(str(path), environ={}).server.port == 9090


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("jwt:\n  secret: from-file-and-at-least-32-bytes-long\n")
    settings = load_settings(
        str(path),
        environ={
            "DATABASE_URL": "postgresql://u@h/db",
            "REDIS_URL": "redis://127.0.0.1:6379/3",
            "JWT_SECRET": "from-env-and-also-at-least-32-bytes-long",
            "OPENAI_API_KEY": "sk-env",
        },
    )
    assert settings.database_url == "postgresql://u@h/db"
    assert settings.redis.connection_url() == "redis://127.0.0.1:6379/3"
    assert settings.jwt.secret == "from-env-and-also-at-least-32-bytes-long"
    openai = [p for p in settings.llm.providers if p.kind == "openai"][0]
    assert openai.api_key == "sk-env"


def test_redis_cluster_nodes_from_environment() -> None:
    settings = load_settings(None, environ={"REDIS_CLUSTER_NODES": "10.0.0.1:7000, 10.0.0.2:7001,"})
    assert settings.redis.cluster_nodes == ("10.0.0.1:7000", "10.0.0.2:7001")
    assert settings.redis.enabled and settings.redis.cluster
    with pytest.raises(ConfigError, match="cluster_nodes"):  # with REDIS_URL: two deployments
        load_settings(None, environ={"REDIS_CLUSTER_NODES": "h:7000", "REDIS_URL": "redis://h:6379/0"})


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text("server:\n  port: 7070\n")
    assert load_settings(None, environ={"REALTIME_LLM_CONFIG": str(path)}).server.port == 7070


@pytest.mark.parametrize(
    "text, named",
    [
        ("server:\n  prot: 80\n", "server.prot"),
        ("bogus: 1\n", "bogus"),
        ("server:\n  port: eighty\n", "server.port"),
        ("jwt:\n  ttl_seconds: [1]\n", "jwt.ttl_seconds"),
        ("redis: 5\n", "redis"),
        ("llm:\n  providers:\n    - {name: x, kind: magic, models: [a]}\n", "llm.providers[0].kind"),
        ("llm:\n  providers:\n    - {name: x, kind: demo, models: [a], extra: 1}\n", "llm.providers[0].extra"),
        ("llm:\n  default_model: nothing-serves-this\n", "llm.default_model"),
        ("server: [1, 2]\n", "server"),
        ("- a\n- b\n", "mapping"),
        ("server:\n  port: 70000\n", "server.port"),
        ("redis:\n  cluster_nodes: 127.0.0.1:7000\n", "redis.cluster_nodes"),  # a list, not a string
        ("redis:\n  cluster_nodes: [localhost]\n", "redis.cluster_nodes"),  # host:port
        ("redis:\n  cluster_nodes: ['h:99999']\n", "redis.cluster_nodes"),
        ("redis:\n  address: h:6379\n  cluster_nodes: ['h:7000']\n", "redis.cluster_nodes"),  # one or the other
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), environ={})
    assert named in str(caught.value)


def _serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "realtime_llm", "serve", *args],
        cwd=cwd, capture_output=True, text=True, timeout=30,
    )


@pytest.mark.parametrize(
    "content, named",
    [
        (None, "missing.yaml"),
        ("server: {port: 1\n", "not valid YAML"),
        ("server:\n  nope: 1\n", "server.nope"),
        ("jwt:\n  ttl_seconds: soon\n", "jwt.ttl_seconds"),
        ('jwt:\n  secret: "S3cureK3y#2024!AIsafety"\n', "published example"),  # the original's
        ("jwt:\n  secret: short-secret\n", "at least 32 bytes"),
        ("server:\n  allowed_origins: [example.com]\n", "server.allowed_origins"),
        ("server:\n  allowed_origins: [https://example.com/app]\n", "server.allowed_origins"),
    ],
)
def test_cli_bad_config_exits_with_one_line(tmp_path: Path, content: str | None, named: str) -> None:
    """A bad config stops start-up with a non-zero exit and a single line naming the key or file."""
    path = tmp_path / "missing.yaml"
    if content is not None:
        path.write_text(content)
    result = _serve("--config", str(path), cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_refuses_workers_without_redis(tmp_path: Path) -> None:
    result = _serve("--workers", "2", cwd=tmp_path)
    assert result.returncode != 0
    assert "Redis" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_redis_password_is_quoted_and_redacted() -> None:
    """A password with URL-special characters neither breaks the URL nor shows in the start-up line."""
    from realtime_llm.config import RedisSettings
    from realtime_llm.server import redact_url

    url = RedisSettings(address="127.0.0.1:6379", password="p/a#s?s@w:rd").connection_url()
    import redis

    assert redis.connection.parse_url(url)["password"] == "p/a#s?s@w:rd"
    assert "p/a" not in redact_url(url) and "***" in redact_url(url)
    assert redact_url("postgresql://u:secret@db.example:5432/x") == "postgresql://u:***@db.example:5432/x"
