"""The HTTP API, assembled: :func:`build_api` returns a plain Starlette app over an
:class:`~serving.http.backend.ApiBackend`. The Ingress deployment mounts it with
DeploymentHandles behind the backend; tests and the benchmark's bare baseline run the same app
in-process. Nothing here knows about Ray.

The parts live in :mod:`serving.http`: the routes (listed once; the Starlette routes and
``/openapi.json`` are both made from that list), the error model and its handlers, and one
middleware per cross-cutting concern. The order of the middleware matters: the request id
first (every reply, errors included, carries it), then the metrics (they see the final
status), then the 500 catch-all; per route, the API key before the body limit (an
unauthenticated client learns nothing about the body it sent).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from serving import web
from serving.http.backend import ApiBackend
from serving.http.config import ApiConfig
from serving.http.errors import EXCEPTION_HANDLERS
from serving.http.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    InternalErrorMiddleware,
    RequestIdMiddleware,
    RequestMetricsMiddleware,
    RequestStats,
)
from serving.http.openapi import openapi_spec
from serving.http.routes import ApiRoute, RouteContext, api_routes

TITLE = "Newsdesk"
VERSION = "0.1.0"
DESCRIPTION = "News articles in, faithful short summaries with an importance rating (0-100) out."


def build_api(backend: ApiBackend, config: ApiConfig) -> Starlette:
    """The Starlette app of the API over ``backend``."""
    ctx = RouteContext(backend, config, RequestStats())
    table = api_routes(ctx)
    ctx.openapi = openapi_spec(
        [r.doc for r in table if r.documented],
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION,
    )
    names = frozenset(r.name for r in table)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backend.startup()
        try:
            yield
        finally:
            await backend.shutdown()

    starlette_routes: list[BaseRoute] = [_route(r, config) for r in table]
    starlette_routes += web.routes()  # the digest page at / and its assets under /web/
    return Starlette(
        routes=starlette_routes,
        middleware=[
            Middleware(RequestIdMiddleware, behind_serve_proxy=config.behind_serve_proxy),
            Middleware(RequestMetricsMiddleware, stats=ctx.request_stats, routes=names),
            Middleware(InternalErrorMiddleware, routes=names),
        ],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
    )


def _route(route: ApiRoute, config: ApiConfig) -> Route:
    middleware = []
    if route.doc.auth:
        middleware.append(Middleware(ApiKeyMiddleware, api_key=config.api_key))
    if route.reads_body:
        middleware.append(Middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes))
    return Route(
        route.path,
        route.handler,
        methods=[route.method],
        name=route.name,
        middleware=middleware,
    )
