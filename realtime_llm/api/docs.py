"""Each handler's OpenAPI operation, written beside its code: `@operation(...)`.

/openapi.json (api/openapi.py) walks the app's routes and takes each endpoint's operation,
so the document's paths and methods are the router's own and cannot drift from it.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from realtime_llm.bodies import MAX_ID

F = TypeVar("F", bound=Callable[..., Any])

ATTRIBUTE = "__openapi_operation__"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def event_stream(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/event-stream": {"schema": ref("SSEEvent")}}}


ERROR_RESPONSE = json_response(ref("Error"), "error")
ID_PARAM = {"name": "id", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}
SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def operation(summary: str, responses: dict[str, Any], *, body: str | None = None, params: bool = False,
              secured: bool = True, body_required: bool = True, limited: bool = False,
              query: tuple[dict[str, Any], ...] = ()) -> Callable[[F], F]:
    """Document the decorated handler. `limited`: it may answer 429 (rate limits); `params`:
    it takes the path's {id}; `query`: more parameters. Any operation may answer 503 (the
    database busy or unreachable, the server shutting down)."""
    op: dict[str, Any] = {"summary": summary, "responses": {"503": ERROR_RESPONSE, **responses}}
    if secured:
        op["security"] = SECURED
        op["responses"]["401"] = ERROR_RESPONSE
    if limited:
        op["responses"]["429"] = ERROR_RESPONSE
    if body:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": ref(body)}}}
        op["responses"]["400"] = ERROR_RESPONSE
        op["responses"]["413"] = ERROR_RESPONSE
    if params or query:
        op["parameters"] = ([ID_PARAM] if params else []) + list(query)
        op["responses"]["400"] = ERROR_RESPONSE
    if params:
        op["responses"]["404"] = ERROR_RESPONSE

    return documented(op)


def documented(op: dict[str, Any]) -> Callable[[F], F]:
    """Document the decorated handler with an operation written out whole."""
    def document(handler: F) -> F:
        setattr(handler, ATTRIBUTE, op)
        return handler

    return document


def operation_of(endpoint: Any, method: str = "") -> dict[str, Any] | None:
    """The endpoint's operation (for `method`, where it has one per method: by_method)."""
    per_method = getattr(endpoint, PER_METHOD, None)
    if per_method is not None:
        return operation_of(per_method.get(method.upper()))
    return getattr(endpoint, ATTRIBUTE, None)


PER_METHOD = "__methods__"


def by_method(**handlers: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """One endpoint for a path that several handlers serve, one per method, so the router's
    405 lists them all in `Allow`; each keeps its own operation."""
    table = {method.upper(): handler for method, handler in handlers.items()}

    async def endpoint(request: Request) -> Response:
        return await table["GET" if request.method == "HEAD" else request.method](request)

    setattr(endpoint, PER_METHOD, table)
    return endpoint
