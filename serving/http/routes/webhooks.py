"""The webhook routes (all behind the API key): subscribe, list, show and delete webhooks,
and read a webhook's delivery log. The SQL lives in :mod:`serving.webhooks.store`;
subscribing goes through :func:`serving.webhooks.subscriptions.subscribe`, as the CLI's."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from serving.http.errors import ApiError, validate
from serving.http.openapi import RouteDoc
from serving.http.routes.route import (
    ERRORS,
    WRITE_ERRORS,
    ApiRoute,
    RouteContext,
    json_body,
    json_response,
    positive_id,
    query_of,
)
from serving.http.schemas import ErrorResponse
from serving.webhooks import store
from serving.webhooks.schemas import (
    DeliveryList,
    DeliveryQuery,
    Webhook,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
)
from serving.webhooks.subscriptions import InvalidWebhookURL, subscribe

_ID = {"webhook_id": "The webhook's id."}
_NOT_FOUND = (ErrorResponse, "No such webhook.")
_READ_ERRORS = {k: ERRORS[k] for k in (401, 503)}


class WebhookRoutes:
    def __init__(self, ctx: RouteContext) -> None:
        self.ctx = ctx

    def table(self) -> list[ApiRoute]:
        tags = ("webhooks",)
        return [
            ApiRoute(
                "webhooks_create",
                self.create,
                RouteDoc(
                    "POST",
                    "/v1/webhooks",
                    "Subscribe a URL to story alerts (story.matched, story.grew); the reply "
                    "shows the signing secret, this once.",
                    request=WebhookCreate,
                    responses={201: (WebhookCreated, "Subscribed."), **WRITE_ERRORS},
                    auth=True,
                    tags=tags,
                ),
                reads_body=True,
            ),
            ApiRoute(
                "webhooks_list",
                self.list,
                RouteDoc(
                    "GET",
                    "/v1/webhooks",
                    "Every webhook with its event counts (never its secret).",
                    responses={200: (WebhookList, "The webhooks."), **_READ_ERRORS},
                    auth=True,
                    tags=tags,
                ),
            ),
            ApiRoute(
                "webhook",
                self.get,
                RouteDoc(
                    "GET",
                    "/v1/webhooks/{webhook_id}",
                    "One webhook (never its secret).",
                    path_params=_ID,
                    responses={
                        200: (Webhook, "The webhook."),
                        404: _NOT_FOUND,
                        422: (ErrorResponse, "Not a valid id."),
                        **_READ_ERRORS,
                    },
                    auth=True,
                    tags=tags,
                ),
            ),
            ApiRoute(
                "webhook_delete",
                self.delete,
                RouteDoc(
                    "DELETE",
                    "/v1/webhooks/{webhook_id}",
                    "Unsubscribe: the webhook, its pending events and its log are deleted.",
                    path_params=_ID,
                    responses={
                        204: (None, "Deleted."),
                        404: _NOT_FOUND,
                        422: (ErrorResponse, "Not a valid id."),
                        **_READ_ERRORS,
                    },
                    auth=True,
                    tags=tags,
                ),
            ),
            ApiRoute(
                "webhook_deliveries",
                self.deliveries,
                RouteDoc(
                    "GET",
                    "/v1/webhooks/{webhook_id}/deliveries",
                    "The webhook's events, newest first, each with its state and every "
                    "delivery attempt (status code, error, duration).",
                    path_params=_ID,
                    query=DeliveryQuery,
                    responses={
                        200: (DeliveryList, "The delivery log."),
                        404: _NOT_FOUND,
                        422: ERRORS[422],
                        **_READ_ERRORS,
                    },
                    auth=True,
                    tags=tags,
                ),
            ),
        ]

    async def create(self, request: Request) -> Response:
        body = validate(WebhookCreate, await json_body(request))
        pool = await self.ctx.backend.database()
        try:
            created = await subscribe(pool, body, self.ctx.config.webhooks)
        except InvalidWebhookURL as exc:
            raise ApiError(
                422,
                "validation_error",
                f"url: {exc}",
                details=[{"loc": ["url"], "msg": str(exc), "type": "url_refused"}],
            ) from None
        return json_response(
            created, status=201, headers={"Location": f"/v1/webhooks/{created.id}"}
        )

    async def list(self, request: Request) -> Response:
        hooks = await store.list_webhooks(await self.ctx.backend.database())
        return json_response(WebhookList(count=len(hooks), webhooks=hooks))

    async def get(self, request: Request) -> Response:
        webhook_id = positive_id(request, "webhook_id", "webhook")
        hook = await store.get_webhook(await self.ctx.backend.database(), webhook_id)
        if hook is None:
            raise ApiError(404, "not_found", f"no webhook with id {webhook_id}")
        return json_response(hook)

    async def delete(self, request: Request) -> Response:
        webhook_id = positive_id(request, "webhook_id", "webhook")
        if not await store.delete_webhook(await self.ctx.backend.database(), webhook_id):
            raise ApiError(404, "not_found", f"no webhook with id {webhook_id}")
        return Response(status_code=204)

    async def deliveries(self, request: Request) -> Response:
        webhook_id = positive_id(request, "webhook_id", "webhook")
        query = query_of(request, DeliveryQuery, max_limit=self.ctx.config.max_list_limit)
        pool = await self.ctx.backend.database()
        if await store.get_webhook(pool, webhook_id) is None:
            raise ApiError(404, "not_found", f"no webhook with id {webhook_id}")
        rows = await store.list_deliveries(pool, webhook_id, state=query.state, limit=query.limit)
        return json_response(DeliveryList(webhook_id=webhook_id, count=len(rows), deliveries=rows))
