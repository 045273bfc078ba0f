"""The OpenAPI document's paths are the router's own: every HTTP route and method is in
it, nothing else is, and a route added without its operation cannot go unnoticed."""
from __future__ import annotations

import pytest
from starlette.routing import Route

from realtime_llm.api.openapi import paths
from realtime_llm.app import routes


def test_every_http_route_and_method_is_documented_and_nothing_else() -> None:
    documented = {(path, method) for path, ops in paths(routes()).items() for method in ops}
    served = {(r.path, m.lower()) for r in routes() if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}
    assert documented == served
    assert ("/api/chat/{id}", "post") in documented and len(documented) >= 20


def test_a_route_without_an_operation_is_refused() -> None:
    async def undocumented() -> None: ...

    with pytest.raises(RuntimeError, match="/api/new has no @operation"):
        paths([*routes(), Route("/api/new", undocumented, methods=["GET"])])
