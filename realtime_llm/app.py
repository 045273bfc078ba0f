"""create_app(settings): the URL map, the error mapping and the lifespan that owns resources."""
from __future__ import annotations

import contextlib
import gc
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from realtime_llm import metrics
from realtime_llm.api import (
    branches,
    chat,
    conversations,
    files,
    health,
    imports,
    openai_compat,
    openapi,
    page,
    shares,
    tokens,
    users,
    ws,
)
from realtime_llm.api.docs import by_method
from realtime_llm.config import Settings
from realtime_llm.errors import EXCEPTION_HANDLERS
from realtime_llm.services import open_services


def routes() -> list[Route | WebSocketRoute | Mount]:
    # The router tries them in this order, a regular expression each, for every request:
    # the ones every turn takes come first (no two of these paths match the same URL, so
    # the order changes no answer; /v1/chat/completions was the 34th).
    return [
        Route("/api/chat/{id}", chat.chat, methods=["POST"]),
        Route("/v1/chat/completions", openai_compat.completions, methods=["POST"]),
        WebSocketRoute("/ws/conversations/{id}", ws.conversation_socket),
        Route("/api/chat/{id}/events", chat.events, methods=["GET"]),
        Route("/api/conversations/history/{id}", conversations.history, methods=["GET"]),
        Route("/api/users/register", users.register, methods=["POST"]),
        Route("/api/users/login", users.login, methods=["POST"]),
        Route("/api/users/me", users.me, methods=["GET"]),
        Route("/api/users/logout", users.logout, methods=["POST"]),
        Route("/api/users/logout_all", users.logout_all, methods=["POST"]),
        Route("/api/users/password", users.change_password, methods=["POST"]),
        Route("/api/tokens", by_method(get=tokens.list_tokens, post=tokens.create), methods=["GET", "POST"]),
        Route("/api/tokens/del/{token_id}", tokens.delete, methods=["POST"]),
        Route("/api/tickets", tokens.ticket, methods=["POST"]),
        Route("/api/models", health.models, methods=["GET"]),
        Route("/api/conversations/create", conversations.create, methods=["POST"]),
        Route("/api/conversations/list", conversations.list_conversations, methods=["GET"]),
        Route("/api/conversations/del/{id}", conversations.delete, methods=["POST"]),
        Route("/api/conversations/update/{id}", conversations.update, methods=["POST"]),
        Route("/api/conversations/export/{id}", conversations.export, methods=["GET"]),
        Route("/api/conversations/branch/{id}", branches.branch, methods=["POST"]),
        Route("/api/conversations/fork/{id}", branches.fork, methods=["POST"]),
        Route("/api/conversations/share/{id}", shares.share, methods=["POST"]),
        Route("/api/conversations/unshare/{id}", shares.unshare, methods=["POST"]),
        Route("/api/shared/{share_id}", shares.shared_history, methods=["GET"]),
        Route("/api/shared/{share_id}/events", shares.shared_events, methods=["GET"]),
        Route("/s/{share_id}", shares.shared_page, methods=["GET"]),
        Route("/api/files", files.upload, methods=["POST"]),
        Route("/api/files/{file_id}", files.download, methods=["GET"]),
        Route("/api/import/chatgpt", imports.import_chatgpt, methods=["POST"]),
        Route("/api/chat/{id}/regenerate", chat.regenerate, methods=["POST"]),
        Route("/api/chat/{id}/stop", chat.stop, methods=["POST"]),
        WebSocketRoute("/ws/shared/{share_id}", ws.shared_socket),
        Route("/v1/models", openai_compat.models, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi, methods=["GET"]),
        Route("/", page.index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static"),
    ]


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            # What is alive now (modules, routes, pools, caches' shells) lives as long as
            # the process: frozen, it is no longer walked by every full collection, which
            # then stalled the event loop for about 38 ms (bench.relay_overhead: the p99
            # of the time to first token at one stream).
            gc.collect()
            gc.freeze()
            # Collections of the young generations, fewer and larger: every answer allocates
            # (and frees) thousands of objects, and at Python's default (700, 10, 10) the
            # collector ran 424 times in 6 s of bench.relay_cpu's load, 38 of them walking
            # the middle generation for 3-4 ms each, 330-370 ms of the server's CPU in all;
            # at (5000, 20, 100), 50 times and 1 of them, about 150 ms.
            gc.set_threshold(5000, 20, 100)
            yield

    middleware = [Middleware(metrics.RequestMetrics)]
    if settings.server.allowed_origins:  # none by default: browsers may not call across sites
        middleware.append(Middleware(
            CORSMiddleware,
            allow_origins=list(settings.server.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            max_age=600,
        ))
    return Starlette(
        routes=routes(),
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
