"""``/openapi.json`` built from the same pydantic models that validate the requests.

Starlette has no schema generation from type hints; each route declares its request model,
query model and responses in a :class:`RouteDoc`, and this module turns the list into an
OpenAPI 3.1 document (pydantic's JSON Schemas under ``components/schemas``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class RouteDoc:
    method: str
    path: str
    summary: str
    responses: dict[int, tuple[type[BaseModel] | None, str]]
    request: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: dict[str, str] = field(default_factory=dict)
    auth: bool = False
    media_type: str = "application/json"
    tags: tuple[str, ...] = ()


def openapi_spec(
    routes: list[RouteDoc], *, title: str, version: str, description: str
) -> dict[str, Any]:
    models: set[type[BaseModel]] = set()
    for route in routes:
        if route.request is not None:
            models.add(route.request)
        models.update(m for m, _ in route.responses.values() if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    refs, top = models_json_schema(
        [(m, "validation") for m in ordered] + [(m, "serialization") for m in ordered],
        ref_template=REF,
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return refs[(model, mode)]  # type: ignore[index]

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {"summary": route.summary, "tags": list(route.tags)}
        params: list[dict[str, Any]] = []
        for name, desc in route.path_params.items():
            params.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "description": desc,
                    "schema": {"type": "integer", "minimum": 1},
                }
            )
        if route.query is not None:
            query_schema = route.query.model_json_schema(ref_template=REF)
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in required,
                        "description": prop.get("description", ""),
                        "schema": {k: v for k, v in prop.items() if k != "description"},
                    }
                )
        if params:
            op["parameters"] = params
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(route.request, "validation")}},
            }
        op["responses"] = {}
        for status, (model, desc) in sorted(route.responses.items()):
            response: dict[str, Any] = {"description": desc}
            if model is not None:
                media = route.media_type if status < 300 else "application/json"
                response["content"] = {media: {"schema": ref(model, "serialization")}}
            op["responses"][str(status)] = response
        if route.auth:
            op["security"] = [{"ApiKey": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }
