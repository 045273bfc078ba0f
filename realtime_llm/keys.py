"""The server secret (signs tokens, keys the API-key encryption) and API-key sealing."""
from __future__ import annotations

import base64
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from realtime_llm.config import Settings

logger = logging.getLogger("realtime_llm")


# Where versions before 0.2 kept a generated secret when the database was PostgreSQL: in
# whatever directory the server was started from.
LEGACY_POSTGRES_SECRET = Path("realtime_llm.secret")


def secret_file_path(settings: Settings) -> Path:
    """Where a generated secret lives: `jwt.secret_file`, by default `<sqlite.path>.secret`
    (./llm_backend.db.secret), whichever database is used."""
    if settings.jwt.secret_file:
        return Path(settings.jwt.secret_file).expanduser()
    path = Path(settings.sqlite.path + ".secret").expanduser()
    if not settings.uses_sqlite and not path.exists() and LEGACY_POSTGRES_SECRET.is_file():
        # Keep an existing deployment's tokens and sealed API keys: its secret moves here.
        logger.warning("moving the generated secret %s to %s (its documented place)", LEGACY_POSTGRES_SECRET, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(LEGACY_POSTGRES_SECRET, path)
        except FileNotFoundError:
            pass  # another worker starting at the same moment moved it
    return path


def load_or_create_secret(path: Path) -> str:
    """Read the generated secret, or create it once (mode 0600) if it does not exist yet.

    Several workers may start at the same moment: the secret is written to a private
    temporary file and linked into place, so exactly one of them wins and all read it.
    """
    if path.exists():
        return _read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 32:
        raise OSError(f"secret file {path} holds fewer than 32 characters")
    return secret


def derive_key(secret: str, purpose: str) -> bytes:
    """A 256-bit key for one purpose, so no two uses of the secret share a key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"realtime-llm", info=purpose.encode())
    return hkdf.derive(secret.encode())


class APIKeyBox:
    """Authenticated encryption (AES-256-GCM) of provider API keys at rest."""

    PREFIX = "v1:"
    AAD = b"realtime-llm:api_key"

    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(derive_key(secret, "api-key encryption"))

    def seal(self, api_key: str) -> str:
        if not api_key:
            return ""
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, api_key.encode(), self.AAD)
        return self.PREFIX + base64.urlsafe_b64encode(sealed).decode()

    def open(self, sealed: str) -> str:
        """The key, or "" if it is absent or cannot be opened (the secret changed)."""
        if not sealed.startswith(self.PREFIX):
            return ""
        try:
            raw = base64.urlsafe_b64decode(sealed[len(self.PREFIX):])
            return self._aead.decrypt(raw[:12], raw[12:], self.AAD).decode()
        except (ValueError, InvalidTag):
            return ""


def mask_api_key(api_key: str) -> str:
    """The form shown to clients: "sk-…7f3a"; short keys show nothing of themselves."""
    if not api_key:
        return ""
    if len(api_key) < 12:
        return "…"
    return f"{api_key[:3]}…{api_key[-4:]}"
