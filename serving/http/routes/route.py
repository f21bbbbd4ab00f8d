"""What every route group shares: :class:`ApiRoute` (a handler with its documentation and its
middleware needs), :class:`RouteContext` (what handlers reach: the backend, the API config,
the request statistics, the OpenAPI document), the standard error entries of the document, and
the request parsing every group does the same way (a JSON body, a validated query string)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from serving.http.backend import ApiBackend
from serving.http.config import ApiConfig
from serving.http.errors import ApiError, validation_error
from serving.http.middleware import RequestStats
from serving.http.openapi import RouteDoc
from serving.http.schemas import ErrorResponse

Handler = Callable[[Request], Awaitable[Response]]
Q = TypeVar("Q", bound=BaseModel)


@dataclass(frozen=True)
class ApiRoute:
    """One route: ``name`` labels its metrics, ``doc`` gives its method, path and OpenAPI
    entry (``documented`` False: left out, for the document itself), ``doc.auth`` puts the
    API key in front of it and ``reads_body`` the body-size limit."""

    name: str
    handler: Handler
    doc: RouteDoc
    reads_body: bool = False
    documented: bool = True

    @property
    def method(self) -> str:
        return self.doc.method

    @property
    def path(self) -> str:
        return self.doc.path


@dataclass
class RouteContext:
    """What the handlers of every group reach."""

    backend: ApiBackend
    config: ApiConfig
    request_stats: RequestStats
    openapi: dict[str, Any] = field(default_factory=dict)  # filled by build_api


ERRORS: dict[int, tuple[type[BaseModel] | None, str]] = {
    400: (ErrorResponse, "Malformed JSON or an empty body."),
    401: (ErrorResponse, "Missing or wrong API key (X-API-Key), when one is configured."),
    404: (ErrorResponse, "No such resource."),
    413: (ErrorResponse, "Body over the size limit."),
    422: (ErrorResponse, "Missing or wrong fields; too many articles; unsummarizable input."),
    503: (ErrorResponse, "A part the route needs (the database) is unavailable; retry later."),
}
WRITE_ERRORS = {k: ERRORS[k] for k in (400, 401, 413, 422)}


def json_response(
    model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        model.model_dump_json(), status_code=status, media_type="application/json", headers=headers
    )


async def json_body(request: Request) -> Any:
    """The body as JSON (its size is already limited by BodyLimitMiddleware)."""
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "malformed_json", "the request body is empty; send a JSON object")
    try:
        return json.loads(body.decode("utf-8"))  # RFC 8259: JSON on the wire is UTF-8
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def query_of(request: Request, model: type[Q], *, max_limit: int | None = None) -> Q:
    """The query string as ``model``, validated (a 422 naming the fields), with its ``limit``
    (when it has one) capped at ``max_limit``."""
    params = dict(request.query_params)
    if "since" in params:
        # an unencoded "+00:00" arrives as " 00:00": unambiguous, so accept it
        params["since"] = params["since"].replace(" ", "+")
    try:
        query = model.model_validate(params)
    except ValidationError as exc:
        raise validation_error(exc, ("query",)) from None
    limit = getattr(query, "limit", None)
    if max_limit is not None and isinstance(limit, int) and limit > max_limit:
        raise ApiError(
            422,
            "validation_error",
            f"query.limit: at most {max_limit}",
            details=[{"loc": ["query", "limit"], "msg": "too large", "type": "less_than_equal"}],
        )
    return query


def positive_id(request: Request, name: str, what: str) -> int:
    """A path parameter that must be a positive 64-bit id (a 422 otherwise)."""
    raw = request.path_params[name]
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ID:
        raise ApiError(
            422, "validation_error", f"{what} id must be a positive integer, not {raw!r}"
        )
    return int(raw)


MAX_ID = 2**63 - 1
