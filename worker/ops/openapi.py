"""The OpenAPI 3.1 document of `harvester api`, served at ``GET /openapi.json``.

The request body's schema is generated from the job contract (`worker.queue.payload`,
`BatchRequest`), with the configured batch limit, so the document and the API cannot drift.
"""

from __future__ import annotations

from typing import Any

from worker.queue.payload import BatchRequest
from worker.settings import Settings


def batch_schema(settings: Settings) -> dict[str, Any]:
    """The JSON Schema of ``POST /batches``'s body, from the payload model."""
    schema = BatchRequest.model_json_schema()
    schema["properties"]["urls"]["maxItems"] = settings.max_batch_urls
    return schema


def openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of this API."""
    error = {"$ref": "#/components/schemas/Error"}
    foreign_site = "Without HARVESTER_API_TOKEN: Host (or a POST's Origin) is not loopback"

    def resp(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        if schema is None:
            return {"description": desc}
        return {"description": desc, "content": {"application/json": {"schema": schema}}}

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
        "paths": {
            "/batches": {
                "post": {
                    "summary": "Enqueue a batch of URLs as a fetch_batch job",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}
                        },
                    },
                    "responses": {
                        "200": resp(
                            "The same batch is under this job_id already: nothing added "
                            "(duplicate: true)",
                            {"type": "object"},
                        ),
                        "202": resp("Enqueued", {"type": "object"}),
                        "400": resp("Not JSON", error),
                        "401": resp("Missing or wrong token", error),
                        "403": resp(foreign_site, error),
                        "408": resp("Body not received within HARVESTER_API_BODY_TIMEOUT", error),
                        "409": resp("job_id already used by a different batch", error),
                        "413": resp("Body too large", error),
                        "415": resp("Not application/json", error),
                        "422": resp("Invalid batch or job_id", error),
                        "503": resp("Redis unavailable", error),
                    },
                }
            },
            "/batches/{job_id}": {
                "get": {
                    "summary": "Status, rows landed so far, and the summary once complete",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": resp("The batch", {"type": "object"}),
                        "401": resp("Missing or wrong token", error),
                        "403": resp(foreign_site, error),
                        "404": resp("Unknown job", error),
                        "503": resp("Redis or Postgres unavailable", error),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Redis and Postgres reachable",
                    "responses": {"200": resp("Healthy"), "503": resp("Unavailable")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": resp("Text exposition"),
                        "403": resp(foreign_site, error),
                        "503": resp("Redis unavailable", error),
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": resp("OpenAPI")}}
            },
        },
    }
