"""The API's routes, one module per group, listed once: :func:`api_routes` gives every route
with its handler, its middleware needs (API key, body limit) and its documentation;
:func:`serving.http.app.build_api` makes the Starlette routes and ``/openapi.json`` from that list.

Handlers parse and validate (:mod:`.route`), call the :class:`~serving.http.backend.ApiBackend`,
and raise :class:`~serving.http.errors.ApiError` (or let the backend's typed errors through) for
the error handlers to answer. A new group is a module with a class whose ``table()`` lists its
routes, added to :data:`GROUPS`.
"""

from __future__ import annotations

from serving.http.routes.admin import AdminRoutes
from serving.http.routes.articles import ArticleRoutes
from serving.http.routes.digest_feeds import DigestFeedRoutes
from serving.http.routes.feed_admin import FeedRoutes
from serving.http.routes.route import ApiRoute, RouteContext
from serving.http.routes.search import SearchRoutes
from serving.http.routes.summarize import SummarizeRoutes
from serving.http.routes.webhooks import WebhookRoutes

GROUPS = (
    SummarizeRoutes,
    ArticleRoutes,
    SearchRoutes,
    DigestFeedRoutes,
    AdminRoutes,
    FeedRoutes,
    WebhookRoutes,
)

__all__ = ["GROUPS", "ApiRoute", "RouteContext", "api_routes"]


def api_routes(ctx: RouteContext) -> list[ApiRoute]:
    """Every route of every group, in :data:`GROUPS` order; a path+method listed twice fails."""
    table = [route for group in GROUPS for route in group(ctx).table()]
    seen: set[tuple[str, str]] = set()
    for route in table:
        key = (route.method, route.path)
        if key in seen:
            raise ValueError(f"route {route.method} {route.path} listed twice")
        seen.add(key)
    return table
