"""POST /api/users/register, /login, /logout and GET /api/users/me."""
from __future__ import annotations

import re

from starlette.requests import Request

from realtime_llm.api.access import require_caller, services_of
from realtime_llm.api.docs import ERROR_RESPONSE, json_response, operation, ref
from realtime_llm.bodies import read_json_object, required_string
from realtime_llm.errors import BadRequest, Conflict, Unauthorized
from realtime_llm.responses import JSONResponse
from realtime_llm.store.users import UsernameTaken

USERNAME = re.compile(r"[A-Za-z0-9_.@-]+")


@operation("Register a user", {"201": json_response(ref("Message"), "registered")},
           body="Registration", secured=False, limited=True)
async def register(request: Request) -> JSONResponse:
    services = services_of(request)
    limits = services.settings.limits
    await services.limiter.check("registrations from this address", f"register:{client_address(request)}",
                                 limits.registrations_per_hour_per_address, 3600)
    username, password = await _credentials(request)
    rules = services.settings.auth
    if not USERNAME.fullmatch(username):
        raise BadRequest("username may only contain letters, digits and _ . @ -")
    if len(password) < rules.min_password_length:
        raise BadRequest(f"password must be at least {rules.min_password_length} characters")
    if await services.users.by_username(username) is not None:
        raise BadRequest("username already taken")
    password_hash = await services.hasher.hash(password)
    try:
        await services.users.create(username, password_hash)
    except UsernameTaken:
        raise BadRequest("username already taken") from None
    return JSONResponse({"message": "User registered successfully"}, status_code=201)


@operation("Log in; returns a bearer token", {"200": json_response(ref("Token"), "logged in"), "401": ERROR_RESPONSE},
           body="Credentials", secured=False, limited=True)
async def login(request: Request) -> JSONResponse:
    services = services_of(request)
    limits = services.settings.limits
    await services.limiter.check("login attempts from this address", f"login-address:{client_address(request)}",
                                 limits.login_attempts_per_minute_per_address, 60)
    username, password = await _credentials(request)
    await services.limiter.check("login attempts for this user", f"login-user:{username.lower()}",
                                 limits.login_attempts_per_minute_per_username, 60)
    user = await services.users.by_username(username)
    # An unknown user is checked against a dummy hash: same answer, about the same time.
    ok = await services.hasher.verify(password, user.password_hash if user else None)
    if user is None or not ok:
        raise Unauthorized("invalid username or password")
    if services.hasher.outdated(user.password_hash):  # imported: now hashed as ours are
        await services.users.replace_hash(user.id, user.password_hash, await services.hasher.hash(password),
                                          change_required=len(password) < services.settings.auth.min_password_length)
    return JSONResponse({"token": services.tokens.issue(user.id, user.session_epoch)})


def client_address(request: Request) -> str:
    """The client's address (uvicorn takes it from X-Forwarded-For when the proxy is trusted:
    FORWARDED_ALLOW_IPS, by default 127.0.0.1, e.g. a local Caddy)."""
    return request.client.host if request.client else "unknown"


@operation("The caller", {"200": json_response(ref("Me"), "the caller")})
async def me(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    user = caller.user
    usage = await services_of(request).users.usage(user.id)
    return JSONResponse({"user_id": user.id, "username": user.username, "created_time": user.created_time,
                         "usage": usage, "password_change_required": bool(user.password_change_required)})


@operation("Revoke the caller's token", {"200": json_response(ref("Message"), "revoked"), "400": ERROR_RESPONSE})
async def logout(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    if caller.claims.api_token:
        raise BadRequest("an API token is not logged out: delete it (POST /api/tokens/del/{token_id})")
    services = services_of(request)
    await services.revocations.revoke(caller.claims.jti, caller.claims.expires_at)
    services.sessions.end_session(caller.claims.jti)  # here at once; other processes within a second
    return JSONResponse({"message": "Logged out successfully"})


@operation("Change the password; every login session ends (API tokens stay)",
           {"200": json_response(ref("Message"), "changed"), "409": ERROR_RESPONSE}, body="PasswordChange",
           limited=True)
async def change_password(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    services = services_of(request)
    rules = services.settings.auth
    body = await read_json_object(request, services.settings.server)
    old = required_string(body, "old_password", max_chars=rules.max_password_length)
    new = required_string(body, "new_password", max_chars=rules.max_password_length)
    await services.limiter.check("login attempts for this user", f"login-user:{caller.user.username.lower()}",
                                 services.settings.limits.login_attempts_per_minute_per_username, 60)
    if len(new) < rules.min_password_length:
        raise BadRequest(f"password must be at least {rules.min_password_length} characters")
    if not await services.hasher.verify(old, caller.user.password_hash):
        raise Unauthorized("the old password is wrong")
    epoch = await services.users.change_password(caller.user.id, caller.user.password_hash,
                                                 await services.hasher.hash(new))
    if epoch is None:
        raise Conflict("the password was changed meanwhile: log in again")
    services.sessions.end_user_sessions(caller.user.id, epoch)  # here at once; elsewhere within a second
    return JSONResponse({"message": "Password changed: every session has ended, log in again"})


@operation("Log out everywhere: every login session ends (API tokens stay)",
           {"200": json_response(ref("Message"), "ended")})
async def logout_all(request: Request) -> JSONResponse:
    caller = await require_caller(request)
    services = services_of(request)
    epoch = await services.users.end_sessions(caller.user.id)
    services.sessions.end_user_sessions(caller.user.id, epoch)
    return JSONResponse({"message": "Every session has ended"})


async def _credentials(request: Request) -> tuple[str, str]:
    services = services_of(request)
    rules = services.settings.auth
    body = await read_json_object(request, services.settings.server)
    username = required_string(body, "username", max_chars=rules.max_username_length)
    password = required_string(body, "password", max_chars=rules.max_password_length)
    if not username:
        raise BadRequest("'username' must not be empty")
    if not password:
        raise BadRequest("'password' must not be empty")
    return username, password
