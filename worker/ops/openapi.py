"""The OpenAPI 3.1 document of `harvester api`, served at ``GET /openapi.json``.

The request body's schema is generated from the job contract (`worker.queue.payload`,
`BatchRequest`), with the configured batch limit, so the document and the API cannot drift.
"""

from __future__ import annotations

from typing import Any, Final

from worker.queue.payload import BatchRequest
from worker.settings import Settings


def batch_schema(settings: Settings) -> dict[str, Any]:
    """The JSON Schema of ``POST /batches``'s body, from the payload model."""
    schema = _inlined(BatchRequest.model_json_schema())
    for field in ("urls", "requests"):
        # An optional list is "anyOf": [the list, null].
        listed = schema["properties"][field]["anyOf"][0]
        listed["maxItems"] = settings.max_batch_urls
    paginate = schema["properties"]["paginate"]["anyOf"][0]
    paginate["properties"]["max_pages"]["maximum"] = settings.max_pages
    return schema


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` put in place of their references: a ``#/$defs/...``
    reference would be read against the OpenAPI document's root, where there are none."""
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(
                    {
                        **defs[ref.removeprefix("#/$defs/")],
                        **{k: v for k, v in node.items() if k != "$ref"},
                    }
                )
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    result: dict[str, Any] = inline(schema)
    return result


_ERROR: Final = {"$ref": "#/components/schemas/Error"}
_FOREIGN_SITE: Final = "Without HARVESTER_API_TOKEN: Host (or a POST's Origin) is not loopback"


def _resp(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": desc}
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of this API."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "harvester", "version": "0.1.0"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "Batch": batch_schema(settings),
            },
        },
        "paths": {**_batch_paths(), **_operations_paths()},
    }


def _batch_paths() -> dict[str, Any]:
    post = {
        "summary": "Enqueue a batch of URLs as a fetch_batch job",
        "security": [{"bearer": []}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}},
        },
        "responses": {
            "200": _resp(
                "The same batch is under this job_id already: nothing added (duplicate: true)",
                {"type": "object"},
            ),
            "202": _resp("Enqueued", {"type": "object"}),
            "400": _resp("Not JSON", _ERROR),
            "401": _resp("Missing or wrong token", _ERROR),
            "403": _resp(_FOREIGN_SITE, _ERROR),
            "408": _resp("Body not received within HARVESTER_API_BODY_TIMEOUT", _ERROR),
            "409": _resp("job_id already used by a different batch", _ERROR),
            "413": _resp("Body too large", _ERROR),
            "415": _resp("Not application/json", _ERROR),
            "422": _resp("Invalid batch or job_id", _ERROR),
            "503": _resp("Redis unavailable", _ERROR),
        },
    }
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    get = {
        "summary": "Status, rows landed so far, and the summary once complete",
        "security": [{"bearer": []}],
        "parameters": [job_id],
        "responses": {
            "200": _resp("The batch", {"type": "object"}),
            "401": _resp("Missing or wrong token", _ERROR),
            "403": _resp(_FOREIGN_SITE, _ERROR),
            "404": _resp("Unknown job", _ERROR),
            "503": _resp("Redis or Postgres unavailable", _ERROR),
        },
    }
    return {"/batches": {"post": post}, "/batches/{job_id}": {"get": get}}


def _operations_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "summary": "Redis and Postgres reachable",
                "responses": {"200": _resp("Healthy"), "503": _resp("Unavailable")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": _resp("Text exposition"),
                    "403": _resp(_FOREIGN_SITE, _ERROR),
                    "503": _resp("Redis unavailable", _ERROR),
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _resp("OpenAPI")}}
        },
    }
