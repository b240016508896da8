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
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                # The dashboard's session (POST /login); a POST with it also needs X-CSRF-Token.
                "session": {"type": "apiKey", "in": "cookie", "name": "harvester_session"},
            },
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "Batch": batch_schema(settings),
            },
        },
        "paths": {**_batch_paths(), **_operations_paths(), **_dashboard_paths()},
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


_AUTH: Final[list[dict[str, list[str]]]] = [{"bearer": []}, {"session": []}]
_CSRF: Final = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": False,
    "description": "The session's CSRF token (GET /session): required with the session cookie",
    "schema": {"type": "string"},
}


def _read(summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": _AUTH,
            "parameters": params or [],
            "responses": {
                "200": _resp("OK", {"type": "object"}),
                "400": _resp("A bad query parameter", _ERROR),
                "401": _resp("No bearer token and no session", _ERROR),
                "403": _resp(_FOREIGN_SITE, _ERROR),
                "503": _resp("Redis or Postgres unavailable", _ERROR),
            },
        }
    }


def _change(summary: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """A POST that changes something; ``body`` None: it reads no body."""
    post: dict[str, Any] = {
        "summary": summary,
        "security": _AUTH,
        "parameters": [_CSRF],
        "responses": {
            "200": _resp("Done", {"type": "object"}),
            "400": _resp("A body that is not a JSON object", _ERROR),
            "401": _resp("No bearer token and no session", _ERROR),
            "403": _resp("A session without its CSRF token, or " + _FOREIGN_SITE, _ERROR),
            "408": _resp("The body did not arrive in time", _ERROR),
            "413": _resp("A body over HARVESTER_API_MAX_BODY_BYTES", _ERROR),
            "415": _resp("A body that is not application/json", _ERROR),
            "422": _resp("An invalid body", _ERROR),
            "503": _resp("Redis or Postgres unavailable", _ERROR),
        },
    }
    if body is not None:
        post["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return {"post": post}


def _query(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": {"type": kind}}


_IDS: Final = {
    "type": "array",
    "items": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
    "minItems": 1,
    "maxItems": 1000,
}


def _login() -> dict[str, Any]:
    """``POST /login``: the API token traded for a session cookie."""
    return {
        "post": {
            "summary": "Trade the API token for a session cookie (HttpOnly, SameSite=Strict)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"token": {"type": "string"}},
                            "required": ["token"],
                        }
                    }
                },
            },
            "responses": {
                "200": _resp("Logged in: Set-Cookie harvester_session", {"type": "object"}),
                "401": _resp("Wrong token", _ERROR),
                "403": _resp("Origin of another site", _ERROR),
                "404": _resp("No HARVESTER_API_TOKEN: nothing to log in to", _ERROR),
            },
        }
    }


def _dashboard_paths() -> dict[str, Any]:
    """The dashboard's endpoints (`worker.ops.dashboard`); also for scripts, with the token."""
    html = {"200": {"description": "HTML", "content": {"text/html": {}}}}
    return {
        "/": {"get": {"summary": "The dashboard, or its login form", "responses": html}},
        "/login": _login(),
        "/logout": _change("End the session", None),
        "/session": _read("How this request is authorised, and the session's CSRF token"),
        "/status": _read("What `harvester status --json` prints"),
        "/status/history": _read(
            "URLs landed per minute by outcome, failures per minute by kind, and the queue's "
            "depth and oldest wait as the API sampled them (every 15 s, the last hour)",
            [_query("minutes", "how many minutes back (60; at most 1440)", "integer")],
        ),
        "/status/progress": _read(
            "URLs (total) and outcomes landed (landed) of running jobs",
            [_query("job", "a job id (repeatable, at most 100)")],
        ),
        "/failures": _read(
            "Failure rows, newest first",
            [
                _query("kind", "an error kind (repeatable: any of them)"),
                _query("job", "a job id"),
                _query("host", "a URL's host"),
                _query("limit", "rows at most (100; at most 1000)", "integer"),
            ],
        ),
        "/failures/replay": _change(
            "Replay these failure rows (those not replayed yet) as new jobs",
            {"type": "object", "properties": {"ids": _IDS}, "required": ["ids"]},
        ),
        "/sources": _read("Registered sources", [_query("limit", "at most (1000)", "integer")]),
        "/sources/enabled": _change(
            "Enable or disable sources",
            {
                "type": "object",
                "properties": {"ids": _IDS, "enabled": {"type": "boolean"}},
                "required": ["ids", "enabled"],
            },
        ),
    }
