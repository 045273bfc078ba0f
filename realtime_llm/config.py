"""YAML configuration -> frozen dataclasses, with environment overrides and strict validation."""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

import yaml


class ConfigError(Exception):
    """A configuration problem, told in one line that names the key or file."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080  # the original wrote it as a string ("8080"); both are accepted
    workers: int = 1
    max_body_bytes: int = 1_048_576
    log_level: str = "info"  # debug, info, warning, error: no level logs secrets
    # On SIGTERM running answers get this long to finish before they are stopped (and saved).
    shutdown_grace_seconds: float = 30.0
    # Browser origins (e.g. "https://app.example.com") allowed to call the API across
    # sites (CORS) and to open WebSockets; the server's own origin always may. None by default.
    allowed_origins: tuple[str, ...] = ()
    # A request's line and headers: at most this many bytes (else 431) and complete within
    # this long of its first byte (else the connection is closed): slowloris and header floods.
    max_header_bytes: int = 65_536
    header_timeout_seconds: float = 10.0
    # A request body must arrive within this long of its headers (else 408).
    body_timeout_seconds: float = 30.0
    # An idle connection (no request yet, or none since the last response) closes after
    # this; longer than a proxy's own idle timeout (the Caddyfile's 60 s), so the proxy,
    # not the app, closes idle connections and never sends a request on one being closed.
    keep_alive_seconds: int = 75


@dataclass(frozen=True)
class RedisSettings:
    address: str = ""  # "host:port"; empty = in-process broker and cache
    password: str = ""
    db: int = 0
    url: str = ""  # redis://... ; REDIS_URL sets it and wins over address
    key_prefix: str = "rtllm"  # every key and channel starts with this
    socket_timeout: float = 5.0  # every Redis call gives up after this
    # Connections per process; a call finding them all busy waits (up to socket_timeout)
    # rather than failing.
    max_connections: int = 100

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.address)

    def connection_url(self) -> str:
        if self.url:
            return self.url
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.address}/{self.db}"


@dataclass(frozen=True)
class SqliteSettings:
    path: str = "./llm_backend.db"
    max_open_conns: int = 10
    max_idle_conns: int = 5
    conn_max_lifetime: int = 300
    busy_timeout_ms: int = 5000


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""  # e.g. postgresql://user@host/db; overrides sqlite


@dataclass(frozen=True)
class JwtSettings:
    secret: str = ""  # empty = generated once, kept beside the database
    ttl_seconds: int = 86400
    secret_file: str = ""  # where a generated secret is kept; default: beside the SQLite file


@dataclass(frozen=True)
class AuthSettings:
    bcrypt_rounds: int = 12
    min_password_length: int = 8
    max_password_length: int = 1024
    max_username_length: int = 64


@dataclass(frozen=True)
class LimitsSettings:
    max_title_chars: int = 200
    max_message_chars: int = 32_000
    max_system_prompt_chars: int = 8_000
    max_api_key_chars: int = 512
    max_ws_frame_bytes: int = 262_144  # larger WebSocket frames close the socket with 1009
    # Rate limits (0 = none): past one, HTTP answers 429 with Retry-After, a WebSocket
    # gets an error event and is closed with 1008. Shared through Redis when there is one.
    login_attempts_per_minute_per_username: int = 10
    login_attempts_per_minute_per_address: int = 60
    registrations_per_hour_per_address: int = 20
    messages_per_minute_per_user: int = 30  # chat messages and regenerations, HTTP and WebSocket
    ws_frames_per_10_seconds: int = 100  # per socket, any frame
    websockets_per_user: int = 20  # open at once, over every process
    # With Redis: how soon the sockets of a process that died uncleanly stop counting.
    websocket_seat_lease_seconds: float = 60


@dataclass(frozen=True)
class StreamSettings:
    batch_ms: int = 25  # deltas closer together than this go out as one event
    replay_events: int = 2000  # events kept per conversation for resume
    replay_ttl_seconds: int = 3600  # an idle conversation's replay buffer is dropped after this
    subscriber_queue: int = 1000  # events a slow subscriber may fall behind before it is cut off
    subscriber_queue_bytes: int = 1_048_576  # ... and bytes of them (checked before each event)
    max_answer_chars: int = 1_000_000  # a longer answer is stopped there and saved
    keepalive_seconds: float = 15.0  # SSE comment / WebSocket ping when idle
    lock_ttl_seconds: float = 10.0  # a generation's lock expires unless its process renews it
    max_generation_seconds: float = 600.0  # a generation running longer than this is stopped
    ws_auth_timeout_seconds: float = 10.0  # a socket must authenticate within this


@dataclass(frozen=True)
class ProviderSettings:
    name: str = ""
    kind: str = ""  # "openai" or "demo"
    models: tuple[str, ...] = ()
    base_url: str = ""
    api_key: str = ""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    delay_ms: int = 30  # demo: pause between tokens
    # openai: ask for token counts (stream_options.include_usage); turn off for an
    # upstream that rejects the field. Without counts, usage is estimated.
    include_usage: bool = True


PROVIDER_KINDS = ("openai", "demo")


def _default_providers() -> tuple[ProviderSettings, ...]:
    return (
        ProviderSettings(name="demo", kind="demo", models=("demo", "demo-*")),
        ProviderSettings(
            name="openai", kind="openai", base_url="https://api.openai.com/v1", models=("gpt-*",)
        ),
    )


@dataclass(frozen=True)
class LlmSettings:
    default_model: str = "demo"
    system_prompt: str = "You are a helpful assistant."
    context_budget_tokens: int = 6000  # history sent to the model, newest first, estimated
    # Title an untitled conversation after its first answer (asking its model, or from the
    # first message when the model is the demo or does not answer).
    auto_titles: bool = True
    providers: tuple[ProviderSettings, ...] = field(default_factory=_default_providers)


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one server process."""

    server: ServerSettings = field(default_factory=ServerSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    sqlite: SqliteSettings = field(default_factory=SqliteSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.sqlite.path}"

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def replace(self, **sections: Any) -> Settings:
        """A copy with some fields of some sections changed: replace(server={"port": 0})."""
        changed = {
            name: dataclasses.replace(getattr(self, name), **values)
            for name, values in sections.items()
        }
        return dataclasses.replace(self, **changed)


ENV_OVERRIDES = {
    "DATABASE_URL": ("database", "url"),
    "REDIS_URL": ("redis", "url"),
    "JWT_SECRET": ("jwt", "secret"),
}


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (explicit path, REALTIME_LLM_CONFIG, or ./config.yaml if present)."""
    environ = os.environ if environ is None else environ
    raw = _read_yaml(path, environ)
    for variable, (section, key) in ENV_OVERRIDES.items():
        if environ.get(variable):
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"config: '{section}' must be a mapping")
            raw[section][key] = environ[variable]
    settings = _build(Settings, raw, "")
    settings = _apply_openai_key(settings, environ.get("OPENAI_API_KEY", ""))
    _validate(settings)
    return settings


def _read_yaml(path: str | None, environ: Mapping[str, str]) -> dict[str, Any]:
    explicit = path or environ.get("REALTIME_LLM_CONFIG")
    if explicit:
        file = Path(explicit)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
    else:
        file = Path("config.yaml")
        if not file.is_file():
            return {}
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file}: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"config file {file} is not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping at the top level")
    return data


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config: '{where or 'top level'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"config: unknown key '{dotted}'")
        values[key] = _coerce(hints[key], value, dotted)
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"config: '{where}' must be a list")
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is int:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config: '{where}' must be an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config: '{where}' must be a number")
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"config: '{where}' must be a string")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: '{where}' must be true or false")
        return value
    raise ConfigError(f"config: '{where}' has an unsupported type")  # pragma: no cover


def _apply_openai_key(settings: Settings, key: str) -> Settings:
    if not key:
        return settings
    providers = tuple(
        dataclasses.replace(p, api_key=key) if p.kind == "openai" and not p.api_key else p
        for p in settings.llm.providers
    )
    return dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, providers=providers))


# The example secret in the original project's published config.yaml: anyone can forge
# tokens with it.
PUBLISHED_SECRETS = frozenset({"S3cureK3y#2024!AIsafety"})
MIN_SECRET_BYTES = 32
LOG_LEVELS = ("debug", "info", "warning", "error")


def _validate(settings: Settings) -> None:
    secret = settings.jwt.secret
    if secret in PUBLISHED_SECRETS:
        raise ConfigError("config: 'jwt.secret' is the original project's published example; use a secret of "
                          "your own (32+ random bytes) or leave it empty to have one generated")
    if secret and len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"config: 'jwt.secret' must be at least {MIN_SECRET_BYTES} bytes "
                          "(or empty: one is generated and kept beside the database)")
    for origin in settings.server.allowed_origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(f"config: 'server.allowed_origins' entry {origin!r} must look like "
                              "https://host[:port] (no path), or be *")
    if not 0 <= settings.server.port <= 65535:
        raise ConfigError("config: 'server.port' must be between 0 and 65535")
    if settings.server.workers < 1:
        raise ConfigError("config: 'server.workers' must be at least 1")
    if settings.server.max_body_bytes < 1024:
        raise ConfigError("config: 'server.max_body_bytes' must be at least 1024")
    if settings.server.log_level not in LOG_LEVELS:
        raise ConfigError(f"config: 'server.log_level' must be one of {', '.join(LOG_LEVELS)}")
    if not 0 <= settings.server.shutdown_grace_seconds <= 3600:
        raise ConfigError("config: 'server.shutdown_grace_seconds' must be between 0 and 3600")
    if settings.jwt.ttl_seconds < 1:
        raise ConfigError("config: 'jwt.ttl_seconds' must be positive")
    if not 4 <= settings.auth.bcrypt_rounds <= 31:
        raise ConfigError("config: 'auth.bcrypt_rounds' must be between 4 and 31")
    stream = settings.stream
    if settings.server.max_header_bytes < 1024:
        raise ConfigError("config: 'server.max_header_bytes' must be at least 1024")
    if min(settings.server.header_timeout_seconds, settings.server.body_timeout_seconds,
           settings.server.keep_alive_seconds) <= 0:
        raise ConfigError("config: 'server.header_timeout_seconds', 'body_timeout_seconds' and "
                          "'keep_alive_seconds' must be positive")
    if settings.redis.max_connections < 1:
        raise ConfigError("config: 'redis.max_connections' must be at least 1")
    if stream.subscriber_queue_bytes < 1024 or stream.max_answer_chars < 1:
        raise ConfigError("config: 'stream.subscriber_queue_bytes' (1024 or more) and 'max_answer_chars' "
                          "must be positive")
    if stream.batch_ms < 0 or stream.replay_events < 1 or stream.subscriber_queue < 1:
        raise ConfigError("config: 'stream' sizes must be positive (batch_ms may be 0)")
    if stream.keepalive_seconds <= 0 or stream.lock_ttl_seconds < 1:
        raise ConfigError("config: 'stream.keepalive_seconds' and 'stream.lock_ttl_seconds' must be positive")
    if not 1 <= settings.limits.websocket_seat_lease_seconds <= 3600:
        raise ConfigError("config: 'limits.websocket_seat_lease_seconds' must be between 1 and 3600")
    if settings.llm.context_budget_tokens < 1:
        raise ConfigError("config: 'llm.context_budget_tokens' must be positive")
    if settings.sqlite.max_open_conns < 1:
        raise ConfigError("config: 'sqlite.max_open_conns' must be at least 1")
    url = settings.database_url
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError("config: 'database.url' must start with postgresql:// (or be empty)")
    seen = set()
    for i, provider in enumerate(settings.llm.providers):
        where = f"llm.providers[{i}]"
        if provider.kind not in PROVIDER_KINDS:
            raise ConfigError(
                f"config: '{where}.kind' must be one of {', '.join(PROVIDER_KINDS)}"
                f" (got {provider.kind!r})"
            )
        if not provider.name or provider.name in seen:
            raise ConfigError(f"config: '{where}.name' must be given and unique")
        seen.add(provider.name)
        if provider.kind == "openai" and not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"config: '{where}.base_url' must be an http(s) URL")
        if not provider.models:
            raise ConfigError(f"config: '{where}.models' must list at least one model pattern")
    from realtime_llm.catalog import ModelCatalog

    if not ModelCatalog(settings.llm.providers).can_serve(settings.llm.default_model):
        raise ConfigError("config: 'llm.default_model' is not served by any provider's models")
