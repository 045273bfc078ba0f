"""Logging set up so that no level logs a secret, and a client's faults are not errors."""
from __future__ import annotations

import logging

# At DEBUG these libraries log what must never be logged: aiosqlite and databases every
# query with its arguments (password hashes, sealed keys), uvicorn's WebSocket protocol
# trace the upgrade's Authorization header and every frame (auth tokens). They stay at INFO.
SECRET_TRACING_LOGGERS = ("aiosqlite", "databases", "uvicorn.error", "websockets")


class LogHygiene(logging.Filter):
    """No DEBUG records (they trace secrets). A client's malformed frame is the client's
    fault: a warning without a traceback, so a hostile client cannot fill the log with them."""

    CLIENT_FAULTS = frozenset({"Invalid UTF-8 sequence received from client."})  # uvicorn, closes 1007

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return False
        if record.msg in self.CLIENT_FAULTS:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    quiet_secret_tracing()


def quiet_secret_tracing() -> None:
    """Called again once uvicorn has configured its own loggers (it resets their levels)."""
    for name in SECRET_TRACING_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
        if not any(isinstance(f, LogHygiene) for f in logger.filters):
            logger.addFilter(LogHygiene())
