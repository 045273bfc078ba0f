"""Errors raised by views and services, mapped to JSON responses in one place."""
from __future__ import annotations

import logging
import sqlite3

import asyncpg
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from realtime_llm.responses import JSONResponse

logger = logging.getLogger("realtime_llm")


class APIError(Exception):
    """An error a client caused or should know about; becomes {"error": message}."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(APIError):
    pass


class Unauthorized(APIError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "authentication required") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(APIError):
    status_code = 403
    code = "forbidden"


class NotFound(APIError):
    status_code = 404
    code = "not_found"


class ConversationNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("conversation not found")


class Conflict(APIError):
    status_code = 409
    code = "conflict"


class RequestTimeout(APIError):
    status_code = 408
    code = "request_timeout"


class PayloadTooLarge(APIError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(APIError):
    status_code = 415
    code = "unsupported_media_type"


class UpstreamError(APIError):
    """The model upstream failed; the message is fit to show a person and holds no secrets."""

    status_code = 502
    code = "upstream_error"


class ServiceUnavailable(APIError):
    status_code = 503
    code = "unavailable"


class DatabaseBusy(ServiceUnavailable):
    code = "database_busy"

    def __init__(self) -> None:
        super().__init__("the database is busy; try again in a moment", headers={"Retry-After": "1"})


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"

    def __init__(self) -> None:
        super().__init__("the database is unavailable; try again shortly", headers={"Retry-After": "5"})


# The exception types a database failure may come as; database_error() picks out the
# ones that mean busy (another writer held a lock longer than `sqlite.busy_timeout_ms`)
# or unreachable: the client should try again, it did nothing wrong, the server is fine.
DATABASE_ERRORS = (sqlite3.OperationalError, asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)
POSTGRES_BUSY = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError,
                 asyncpg.QueryCanceledError)


def database_error(exc: BaseException) -> APIError | None:
    """The 503 a database failure means, or None when it is a bug (a 500)."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        return DatabaseBusy() if "locked" in text or "busy" in text else None
    if isinstance(exc, POSTGRES_BUSY):
        return DatabaseBusy()
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                        asyncpg.TooManyConnectionsError, asyncpg.InterfaceError, ConnectionError)):
        return DatabaseUnavailable()
    return None


def as_api_error(exc: BaseException) -> APIError | None:
    """What a client is told about `exc`: the APIError itself, a database failure's 503,
    or None for anything else (a bug)."""
    return exc if isinstance(exc, APIError) else database_error(exc)


def error_response(status_code: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message, "code": code}, status_code=status_code, headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.status_code, exc.message, exc.code, exc.headers)


HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "not found", 405: "method not allowed"}
    message = messages.get(exc.status_code, str(exc.detail))
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, message, HTTP_CODES.get(exc.status_code, "error"), headers)


async def handle_database_error(request: Request, exc: Exception) -> Response:
    error = database_error(exc)
    if error is None:
        return await handle_unexpected(request, exc)
    logger.warning("%s %s: %s (%s)", request.method, request.url.path, error.code, type(exc).__name__)
    return await handle_api_error(request, error)


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client hung up in the middle of its request: not a server error, and nobody is
    left to read an answer. One debug line, no traceback."""
    logger.debug("%s %s: the client disconnected before its request was complete", request.method, request.url.path)
    return Response(status_code=400)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error", "internal")


EXCEPTION_HANDLERS = {
    APIError: handle_api_error,
    HTTPException: handle_http_exception,
    ClientDisconnect: handle_client_disconnect,
    **{kind: handle_database_error for kind in DATABASE_ERRORS},
    Exception: handle_unexpected,
}
