"""Reading the configuration: the YAML file, environment overrides, strict validation. Every
problem is a ConfigError told in one line that names the key or file."""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from realtime_llm.config import PROVIDER_KINDS, ConfigError, Settings

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
    if environ.get("REDIS_CLUSTER_NODES"):  # a list, comma separated
        raw.setdefault("redis", {})
        if not isinstance(raw["redis"], dict):
            raise ConfigError("config: 'redis' must be a mapping")
        raw["redis"]["cluster_nodes"] = [n.strip() for n in environ["REDIS_CLUSTER_NODES"].split(",") if n.strip()]
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
    if settings.redis.cluster_nodes and (settings.redis.address or settings.redis.url):
        raise ConfigError("config: 'redis.cluster_nodes' and 'redis.address'/'redis.url' (REDIS_URL) are two "
                          "different Redis deployments: set one")
    for node in settings.redis.cluster_nodes:
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"config: 'redis.cluster_nodes' entry {node!r} must be host:port")
    if stream.subscriber_queue_bytes < 1024 or stream.max_answer_chars < 1:
        raise ConfigError("config: 'stream.subscriber_queue_bytes' (1024 or more) and 'max_answer_chars' "
                          "must be positive")
    if stream.batch_ms < 0 or stream.replay_events < 1 or stream.subscriber_queue < 1:
        raise ConfigError("config: 'stream' sizes must be positive (batch_ms may be 0)")
    if not 0 < stream.replay_grace_seconds <= stream.replay_ttl_seconds:
        raise ConfigError("config: 'stream.replay_grace_seconds' must be positive and at most 'replay_ttl_seconds'")
    if stream.keepalive_seconds <= 0 or stream.lock_ttl_seconds < 1:
        raise ConfigError("config: 'stream.keepalive_seconds' and 'stream.lock_ttl_seconds' must be positive")
    if not 1 <= settings.limits.websocket_seat_lease_seconds <= 3600:
        raise ConfigError("config: 'limits.websocket_seat_lease_seconds' must be between 1 and 3600")
    limits = settings.limits
    if min(limits.max_file_bytes, limits.max_bytes_per_user, limits.attachments_per_message,
           limits.unattached_file_ttl_seconds, limits.max_import_bytes, limits.max_import_conversations) < 1:
        raise ConfigError("config: 'limits.max_file_bytes', 'max_bytes_per_user', 'attachments_per_message', "
                          "'unattached_file_ttl_seconds', 'max_import_bytes' and 'max_import_conversations' "
                          "must be positive")
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
