"""Liveness (/healthz), readiness (/readyz: database, broker, not draining) and the model list."""
from __future__ import annotations

from typing import Awaitable

import anyio
import sqlalchemy as sa
from starlette.requests import Request

from realtime_llm.api.access import require_caller, services_of
from realtime_llm.api.docs import json_response, operation, ref
from realtime_llm.responses import JSONResponse

READINESS_TIMEOUT = 2.0


@operation("Process is up", {"200": json_response(ref("Status"), "up")}, secured=False)
async def healthz(request: Request) -> JSONResponse:
    """The process is up: always 200 (a liveness probe must not kill a draining process).
    Its status says whether this process takes new work: "ok", or "draining" once it is
    shutting down. Load balancers check this one, not /readyz, so that a database or Redis
    outage, which every process shares, does not take every process out of rotation."""
    return JSONResponse({"status": "draining" if services_of(request).engine.draining else "ok"})


@operation("Database and broker reachable, and not draining for shutdown",
           {"200": json_response(ref("Status"), "ready"),
            "503": json_response(ref("Status"), "not ready, or draining")},
           secured=False)
async def readyz(request: Request) -> JSONResponse:
    services = services_of(request)
    checks = {
        "database": await _check(services.database.fetch_val(sa.text("SELECT 1"))),
        "broker": await _check(services.broker.ping()),
    }
    if services.engine.draining:  # shutting down: a load balancer should send no one new here
        return JSONResponse({"status": "draining", **checks}, status_code=503)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", **checks}, status_code=200 if ready else 503)


async def _check(probe: Awaitable[object]) -> str:
    try:
        with anyio.fail_after(READINESS_TIMEOUT):
            await probe
    except Exception as exc:  # any failure means "not ready", reported, never raised
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@operation("Models this server can serve", {"200": json_response(ref("Models"), "models")})
async def models(request: Request) -> JSONResponse:
    await require_caller(request)
    services = services_of(request)
    return JSONResponse({"default": services.settings.llm.default_model, "models": services.catalog.listing()})
