"""The operator's routes: ``/healthz``, ``/readyz``, ``/v1/stats`` and ``/openapi.json``."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.http.openapi import RouteDoc
from serving.http.routes.route import ERRORS, ApiRoute, RouteContext, json_response
from serving.http.schemas import Health, Readiness


class AdminRoutes:
    def __init__(self, ctx: RouteContext) -> None:
        self.ctx = ctx

    def table(self) -> list[ApiRoute]:
        return [
            ApiRoute(
                "stats",
                self.stats,
                RouteDoc(
                    "GET",
                    "/v1/stats",
                    "Cache hit rate, batch sizes, latency percentiles, queue depth, articles/day.",
                    responses={200: (None, "Statistics (JSON object)."), 401: ERRORS[401]},
                    auth=True,
                    tags=("admin",),
                ),
            ),
            ApiRoute(
                "healthz",
                self.healthz,
                RouteDoc(
                    "GET",
                    "/healthz",
                    "Alive.",
                    responses={200: (Health, "Alive.")},
                    tags=("admin",),
                ),
            ),
            ApiRoute(
                "readyz",
                self.readyz,
                RouteDoc(
                    "GET",
                    "/readyz",
                    "Ready: the model is loaded and the database reachable.",
                    responses={
                        200: (Readiness, "Ready."),
                        503: (Readiness, "Not ready (see checks)."),
                    },
                    tags=("admin",),
                ),
            ),
            ApiRoute(
                "openapi",
                self.openapi_json,
                RouteDoc("GET", "/openapi.json", "This document.", responses={}),
                documented=False,
            ),
        ]

    async def healthz(self, request: Request) -> Response:
        return json_response(Health())

    async def readyz(self, request: Request) -> Response:
        checks, info = await self.ctx.backend.readiness()
        ready = all(c.ok for c in checks.values())
        body = Readiness(ready=ready, checks=checks)
        payload = {**body.model_dump(), "info": info}
        return JSONResponse(payload, status_code=200 if ready else 503)

    async def stats(self, request: Request) -> Response:
        payload = {"api": self.ctx.request_stats.summary(), **(await self.ctx.backend.stats())}
        return JSONResponse(json.loads(json.dumps(payload, default=str)))

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(self.ctx.openapi)
