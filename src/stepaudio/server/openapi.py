"""The request bodies in /openapi.json.

The POST routes read their body themselves (a size cap while reading, strict JSON), so FastAPI cannot see
what they take; this adds each route's pydantic model as its JSON request body, so clients and schema
fuzzers (schemathesis) know the shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

REF_TEMPLATE = "#/components/schemas/{model}"


def publish_request_bodies(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """Make app.openapi() describe `bodies` (POST path -> model) as required application/json bodies."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in bodies.items():
            body = model.model_json_schema(ref_template=REF_TEMPLATE)
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(
                    model=model.__name__)}}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
