"""`harvester enqueue` with methods, bodies, headers and request files, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.helpers import TEST_QUEUE, Services
from tests.helpers.cli import InProcess, cli_env


async def _jobs(redis: aioredis.Redis, job_ids: list[str]) -> list[dict[str, object]]:
    return [json.loads(await redis.get(f"arq:job:{j}"))["k"] for j in job_ids]


async def test_enqueue_sends_method_body_and_headers_with_every_batch(
    cli: InProcess, services: Services, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """--method, --json @FILE and repeated --header become the job's fields, in every batch."""
    body = tmp_path / "query.json"
    body.write_text('{"query": "{ items { id } }"}', encoding="utf-8")
    result = await cli(
        "enqueue",
        "-",
        "--batch-size",
        "1",
        "--method",
        "post",
        "--json",
        f"@{body}",
        "--header",
        "Accept: application/vnd.x+json",
        "--header",
        "X-Tenant:acme",
        env=cli_env(services),
        stdin="https://api.example/graphql\nhttps://api.example/other\n",
    )
    assert result.returncode == 0, result.stderr
    jobs = await _jobs(redis, result.stdout.split())
    assert [j["urls"] for j in jobs] == [
        ["https://api.example/graphql"],
        ["https://api.example/other"],
    ]
    for job in jobs:
        assert job["method"] == "POST"
        assert job["json"] == {"query": "{ items { id } }"}
        assert job["headers"] == {"Accept": "application/vnd.x+json", "X-Tenant": "acme"}


@pytest.mark.parametrize("form", ["lines", "array"])
async def test_enqueue_reads_a_requests_file(
    cli: InProcess, services: Services, redis: aioredis.Redis, tmp_path: Path, form: str
) -> None:
    """--requests takes JSON lines or one JSON array; the flags are the batch's defaults."""
    requests = [
        {"url": "https://api.example/search", "json": {"q": "a"}},
        {"url": "https://api.example/search", "json": {"q": "b"}, "headers": {"X-Page": "2"}},
        {"url": "https://api.example/items", "method": "GET"},
    ]
    path = tmp_path / "requests.json"
    text = (
        "\n".join(map(json.dumps, requests)) if form == "lines" else json.dumps(requests, indent=2)
    )
    path.write_text(text + "\n", encoding="utf-8")
    result = await cli(
        "enqueue", "--requests", str(path), "--method", "POST", env=cli_env(services)
    )
    assert result.returncode == 0, result.stderr
    [job] = await _jobs(redis, result.stdout.split())
    assert job == {"requests": requests, "method": "POST"}


@pytest.mark.parametrize(
    ("argv", "stdin", "says"),
    [
        (["--header", "Authorization: Bearer s3cret"], "https://a.example/\n", "carries a secret"),
        (["--header", "cookie: a=b"], "https://a.example/\n", "header 'cookie' is refused"),
        (["--header", "Connection: close"], "https://a.example/\n", "hop-by-hop"),
        (["--header", "Content-Length: 3"], "https://a.example/\n", "'Content-Length' is refused"),
        (["--header", "X-No-Colon"], "https://a.example/\n", "is not 'Name: value'"),
        (["--method", "DELETE"], "https://a.example/\n", "'method' must be one of"),
        (["--json", "{'q': 1}"], "https://a.example/\n", "--json is not JSON"),
        (["--json", "@/nonexistent/q.json"], "https://a.example/\n", "cannot read"),
        (["--json", "{}"], "https://a.example/\n", "only POST, PUT and PATCH"),
        (
            ["--requests", "-"],
            '{"url": "https://a.example/", "method": "GET", "json": 1}\n',
            "is a request body",
        ),
        (
            ["--requests", "-"],
            '{"url": "https://a.example/"}\n["x"]\n',
            "line 3 is not a JSON object",
        ),
        (
            ["--requests", "-"],
            '{"url": "https://a.example/", "headers": {"Cookie": "a"}}\n',
            "carries a secret",
        ),
        (["--requests", "-"], "[1, 2", "line 2 is not JSON"),
    ],
)
async def test_enqueue_refuses_bad_requests_before_enqueueing_any(
    cli: InProcess,
    services: Services,
    redis: aioredis.Redis,
    argv: list[str],
    stdin: str,
    says: str,
) -> None:
    """A refused header, method or body, or a malformed requests file, is one line on stderr,
    exit 2, and nothing is enqueued, not even the good requests before it."""
    positional = [] if "--requests" in argv else ["-"]
    good = '{"url": "https://a.example/first"}\n' if "--requests" in argv else ""
    result = await cli("enqueue", *positional, *argv, env=cli_env(services), stdin=good + stdin)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("harvester: "), result.stderr
    assert says in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "s3cret" not in result.stderr  # a refused secret header is not repeated back
    assert await redis.zcard(TEST_QUEUE) == 0


async def test_enqueue_wants_one_input(cli: InProcess, services: Services) -> None:
    """A FILE of URLs and --requests together, or neither, is a usage error."""
    both = await cli("enqueue", "-", "--requests", "-", env=cli_env(services), stdin="")
    neither = await cli("enqueue", env=cli_env(services), stdin="")
    for result in (both, neither):
        assert result.returncode == 2
        assert "give a FILE of URLs or --requests FILE" in result.stderr


async def test_an_empty_requests_file_enqueues_nothing(cli: InProcess, services: Services) -> None:
    """A requests file with no request is like an empty URL file: no job, exit 0."""
    result = await cli("enqueue", "--requests", "-", env=cli_env(services), stdin="\n")
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize(
    ("flags", "paginate"),
    [
        (["--paginate", "link"], {"next": "link"}),
        (
            ["--paginate", "json:links.next", "--max-pages", "7"],
            {"next": "json", "path": "links.next", "max_pages": 7},
        ),
        (
            ["--paginate", "cursor:meta.next_cursor:after"],
            {"cursor": {"path": "meta.next_cursor", "param": "after"}},
        ),
    ],
)
async def test_enqueue_paginate_becomes_the_jobs_paginate(
    cli: InProcess,
    services: Services,
    redis: aioredis.Redis,
    flags: list[str],
    paginate: dict[str, object],
) -> None:
    """--paginate link|json:PATH|cursor:PATH:PARAM and --max-pages are the job's paginate."""
    result = await cli(
        "enqueue", "-", *flags, env=cli_env(services), stdin="https://api.example/orders\n"
    )
    assert result.returncode == 0, result.stderr
    (job,) = await _jobs(redis, result.stdout.split())
    assert job["paginate"] == paginate


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--paginate", "pages"], "give link, json:PATH or cursor:PATH:PARAM"),
        (["--paginate", "cursor:meta.next"], "give link, json:PATH or cursor:PATH:PARAM"),
        (["--max-pages", "5"], "--max-pages needs --paginate"),
        (["--paginate", "json:links..next"], "paginate"),
        (["--paginate", "link", "--max-pages", "100000"], "max_pages"),
    ],
)
async def test_enqueue_refuses_a_bad_paginate_before_enqueueing(
    cli: InProcess, services: Services, redis: aioredis.Redis, flags: list[str], message: str
) -> None:
    """A style the flag does not know, or a spec the job model refuses: exit 2, nothing queued."""
    result = await cli(
        "enqueue", "-", *flags, env=cli_env(services), stdin="https://api.example/orders\n"
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert await redis.zcard(TEST_QUEUE) == 0
