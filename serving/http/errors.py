"""The API's error model: every error reply is an :class:`~serving.http.schemas.ErrorResponse`
(a machine-readable code, a message, the request id, the offending fields) with its status.

Routes and middleware raise :class:`ApiError` (or :class:`BackendUnavailable`, or
:class:`~serving.model.result.SummarizerUnavailable`); the exception handlers registered by
:func:`serving.http.app.build_api` turn them into replies, so no route builds an error body itself.
Bad input never gets a 500: malformed JSON (400), a body over the limit (413), wrong fields or
query parameters (422, with the fields), no or a wrong API key (401), unknown ids (404).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import asyncpg
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from serving.http.schemas import ErrorInfo, ErrorResponse
from serving.model.result import SummarizerUnavailable

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error reply: HTTP status, code, message, and optionally fields and headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


class BackendUnavailable(RuntimeError):
    """A part the route needs (the database) is down: 503, not a client error."""


def request_id_of(request: Request) -> str:
    """The id :class:`serving.http.middleware.RequestIdMiddleware` gave this request."""
    return str(getattr(request.state, "request_id", ""))


def error_response(error: ApiError, request_id: str) -> Response:
    body = ErrorResponse(
        error=ErrorInfo(
            code=error.code, message=error.message, request_id=request_id, details=error.details
        )
    )
    return Response(
        body.model_dump_json(exclude_none=True),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


def validation_error(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> ApiError:
    """A 422 naming every offending field (``loc`` under ``prefix``, e.g. ``query``)."""
    details = [
        {"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    first = details[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(422, "validation_error", f"{where}: {first['msg']}{more}", details=details)


def validate(model: type[M], data: Any) -> M:
    """``data`` (a parsed JSON body) as ``model``, or a 422."""
    if not isinstance(data, dict):
        raise ApiError(
            422, "validation_error", f"the body must be a JSON object, not {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


# --- exception handlers (Starlette's ExceptionMiddleware calls them) ------------------------


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, request_id_of(request))


async def on_backend_unavailable(request: Request, exc: Exception) -> Response:
    error = ApiError(503, "unavailable", str(exc), headers={"Retry-After": "10"})
    return error_response(error, request_id_of(request))


async def on_database_error(request: Request, exc: Exception) -> Response:
    """The database went away mid-query (a route that holds the pool): 503, retry later."""
    log.warning("database error on %s: %s", request.url.path, exc)
    error = ApiError(
        503, "unavailable", f"database error: {type(exc).__name__}", headers={"Retry-After": "10"}
    )
    return error_response(error, request_id_of(request))


async def on_summarizer_unavailable(request: Request, exc: Exception) -> Response:
    """503 (504 when it timed out): the client may retry; the article was not judged."""
    assert isinstance(exc, SummarizerUnavailable)
    status, code = (504, "timeout") if exc.timed_out else (503, "unavailable")
    error = ApiError(status, code, exc.message, headers={"Retry-After": "5"})
    return error_response(error, request_id_of(request))


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, wrong method) in the API's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, "not_found", f"no route {request.url.path}")
    elif exc.status_code == 405:
        error = ApiError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}",
            headers=dict(exc.headers or {}),
        )
    else:
        error = ApiError(exc.status_code, "http_error", str(exc.detail))
    return error_response(error, request_id_of(request))


EXCEPTION_HANDLERS = {
    ApiError: on_api_error,
    BackendUnavailable: on_backend_unavailable,
    asyncpg.PostgresConnectionError: on_database_error,
    asyncpg.InterfaceError: on_database_error,
    SummarizerUnavailable: on_summarizer_unavailable,
    HTTPException: on_http_exception,
}
