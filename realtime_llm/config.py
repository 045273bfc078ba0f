"""The configuration: frozen dataclasses, one per section of config.yaml, with their
defaults. (Reading it from the file and the environment, and checking it: configfile.py.)"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote


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
    # A Redis Cluster: some of its nodes, "host:port" (REDIS_CLUSTER_NODES, comma separated);
    # the client finds the rest. Not together with address or url.
    cluster_nodes: tuple[str, ...] = ()
    key_prefix: str = "rtllm"  # every key and channel starts with this
    socket_timeout: float = 5.0  # every Redis call gives up after this
    # Connections per process; a call finding them all busy waits (up to socket_timeout)
    # rather than failing.
    max_connections: int = 100

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.address or self.cluster_nodes)

    @property
    def cluster(self) -> bool:
        return bool(self.cluster_nodes)

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
    # Attachments (POST /api/files).
    max_file_bytes: int = 10_485_760  # one file; larger is a 413, refused while it streams in
    max_bytes_per_user: int = 1_073_741_824  # all of a user's files together; past it a 413
    attachments_per_message: int = 8
    uploads_per_minute_per_user: int = 30
    unattached_file_ttl_seconds: int = 86_400  # a file no message carries is deleted after this
    # POST /api/import/chatgpt: the export's conversations.json or .zip (its conversations.json
    # may unpack to IMPORT_UNZIP_FACTOR times this), conversations in one, imports a user may
    # make an hour (0: no limit).
    max_import_bytes: int = 52_428_800
    max_import_conversations: int = 10_000
    imports_per_hour_per_user: int = 10


@dataclass(frozen=True)
class StreamSettings:
    batch_ms: int = 25  # deltas closer together than this go out as one event
    replay_events: int = 2000  # events kept per conversation for resume
    replay_ttl_seconds: int = 3600  # an idle conversation's replay buffer is dropped after this
    # ... and once its answer has ended (done, error) or its branch changed, after this: the
    # answer is in SQL, and a client resuming later gets `resync` and re-reads history.
    replay_grace_seconds: float = 60.0
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
    # openai: a model served raw puts its thinking in `content`, inside a leading
    # <think>...</think>: split it out as reasoning.
    think_tags: bool = False
    # openai: send earlier answers' thinking back (as `reasoning_content`); most upstreams
    # want it left out, some (interleaved-thinking models) want it.
    send_reasoning: bool = False
    # Its models read images (image_url content parts); false: a message with an image is
    # refused before anything is saved.
    vision: bool = True


PROVIDER_KINDS = ("openai", "demo")


def _default_providers() -> tuple[ProviderSettings, ...]:
    return (
        ProviderSettings(name="demo", kind="demo", models=("demo", "demo-think", "demo-*")),
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
