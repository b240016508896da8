"""The documentation, run: every example in the README and docs/ is executed as written (bar the
few localisations of `tests.helpers.docs`), and outputs the docs show are compared with what the
commands print. A changed example that stops working fails here."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import Services, wait_until
from tests.helpers.docs import Example, Unmarked, blocks, examples, session_script
from tests.helpers.locks import Lock
from tests.helpers.processes import free_ports, kill_tree, kill_tree_in
from tests.helpers.upstream import Upstream
from worker.engine.chunks import Chunk
from worker.engine.outcomes import BatchSummary, Fetched
from worker.engine.writes import write_chunk
from worker.scheduling import polls
from worker.settings import Settings

# The examples each document's session runs, in order; every runnable example of the docs is in
# exactly one of these (a test checks).
SESSIONS: dict[str, list[str]] = {
    "README.md": [
        "install",
        "configure",
        "migrate",
        "worker",
        "enqueue-shell",
        "python-enqueue",
        "http-api",
        "http-enqueue",
        "query",
        "procfile",
        "pages",
        "records",
        "records-query",
    ],
    # The README's "APIs that need credentials", in a session of its own: its worker has the
    # credentials file, the quickstart's does not.
    "README.md#apis": [
        "apis-profiles",
        "apis-worker",
        "apis-enqueue",
    ],
    # The README's "Getting results back": the latest-copy query, then a worker with a webhook
    # secret, the receiver, the openssl check and the stream consumer.
    "README.md#results": [
        "results-latest",
        "results-worker",
        "results-receiver",
        "results-verify",
        "results-stream",
    ],
    "docs/jobs.md": ["jobs-raw-redis", "jobs-enqueue-shell", "jobs-enqueue-requests"],
    "docs/scheduled-sources.md": ["sources-cli", "sources-requests", "sources-sql"],
    "docs/data-model.md": [
        "data-queries",
        "data-latest",
        "data-sources",
        "data-json",
        "data-records",
    ],
    "docs/http-api.md": ["api-start", "api-curl"],
    "docs/dashboard.md": ["dash-start", "dash-session"],
    "docs/cli.md": ["cli-tour"],
    "docs/upgrading.md": ["upgrade-migrate"],
}


def _documents(repo_root: Path) -> list[Path]:
    return [
        repo_root / "README.md",
        repo_root / "ARCHITECTURE.md",
        *sorted((repo_root / "docs").glob("*.md")),
    ]


def test_every_code_block_in_the_docs_is_an_example_or_an_output(repo_root: Path) -> None:
    """No code block is shown without being run, or said not to be and why."""
    unmarked = [b for doc in _documents(repo_root) for b in blocks(doc) if isinstance(b, Unmarked)]
    assert unmarked == []


def test_code_fences_are_well_formed(repo_root: Path) -> None:
    """A fence is ``` alone or with a language: text after it (a fence glued to a sentence)
    turns the rest of the page into code without any test noticing."""
    for doc in _documents(repo_root):
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            fence = line.lstrip()
            if fence.startswith("```"):
                assert re.fullmatch(r"```[\w+-]*", fence), f"{doc.name}:{n}: {line!r}"


def test_every_runnable_example_is_run_by_a_session(repo_root: Path) -> None:
    """The sessions below run every runnable example of the docs, and only those."""
    runnable = {
        (str(doc.relative_to(repo_root)), b.name)
        for doc in _documents(repo_root)
        for b in blocks(doc)
        if isinstance(b, Example) and b.runnable
    }
    planned = {(doc.split("#")[0], name) for doc, names in SESSIONS.items() for name in names}
    assert runnable == planned


@dataclass
class Session:
    returncode: int
    stdout: str
    stderr: str
    folder: Path


@pytest.fixture
async def run_docs(
    repo_root: Path, tmp_path: Path, services: Services, upstream: Upstream, redis: aioredis.Redis
) -> AsyncIterator[Callable[..., Awaitable[Session]]]:
    """Run a document's session in a folder of its own, with the session's servers; every
    background process is stopped afterwards, whatever happens."""
    folders: list[Path] = []

    async def run(doc: str, *, copy_repo: bool = False, timeout: float = 300) -> Session:
        folder = tmp_path / doc.replace("/", "_")
        if copy_repo:
            git = await asyncio.create_subprocess_exec(
                "git", "ls-files", cwd=repo_root, stdout=asyncio.subprocess.PIPE
            )
            tracked = (await git.communicate())[0].decode().split()
            for name in tracked:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(repo_root / name, folder / name)
        folder.mkdir(exist_ok=True)
        folders.append(folder)
        api_port = free_ports(0)
        receiver_port = next(p for p in iter(lambda: free_ports(0), None) if p != api_port)
        honcho_port = free_ports(0, 100)
        replacements = {
            "https://api.example.com": upstream.url("/api"),
            "https://auth.example.com": upstream.base,  # the OAuth2 token endpoint
            '"api.example.com"': f'"{upstream.base.removeprefix("http://")}"',  # profile hosts
            "postgresql://harvester:secret@localhost:5432/harvester": services.database_url,
            "redis://localhost:6379/0": services.redis_url,
            "8080": str(api_port),
            "8081": str(receiver_port),  # the README's webhook receiver
        }
        ready = {
            "worker": "harvester health",
            "apis-worker": "harvester health",
            "http-api": f"curl -sf localhost:{api_port}/healthz",
            "api-start": f"curl -sf localhost:{api_port}/healthz",
            "dash-start": f"curl -sf localhost:{api_port}/healthz",
            "procfile": f"curl -sf localhost:{honcho_port + 100}/healthz",
            "results-worker": "harvester health",
            # It answers no GET (501): a connection is the sign it is up.
            "results-receiver": f"curl -s -o /dev/null localhost:{receiver_port}/",
        }
        docs_examples = examples(repo_root / doc.split("#")[0])
        script = session_script([docs_examples[n] for n in SESSIONS[doc]], replacements, ready)
        (folder / "session.sh").write_text(script)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HARVESTER_", "VIRTUAL_ENV"))
            and k not in ("DATABASE_URL", "REDIS_URL")
        }
        env.update(
            DATABASE_URL=services.database_url,
            REDIS_URL=services.redis_url,
            HARVESTER_ALLOWED_NETWORKS="127.0.0.1/32",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            PORT=str(honcho_port),
        )
        proc = await asyncio.create_subprocess_exec(
            "bash", "session.sh", cwd=folder, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        finally:
            if proc.returncode is None:
                kill_tree(proc.pid)
                await proc.wait()
        return Session(proc.returncode or 0, out.decode(), err.decode(), folder)

    yield run
    for folder in folders:
        for pidfile in folder.glob("*.pid"):
            kill_tree_in(int(pidfile.read_text()), folder.resolve())


async def _landed(pool: asyncpg.Pool, source: str = "catalog") -> set[str]:
    rows = await pool.fetch("SELECT url FROM documents WHERE source = $1", source)
    return {r["url"].rsplit("/api/", 1)[1] for r in rows}


async def test_the_readme_quickstart_runs_from_install_to_a_procfile_formation(
    run_docs: Callable[..., Awaitable[Session]], pool: asyncpg.Pool
) -> None:
    """A fresh virtual environment, the settings, migrate, a worker, enqueueing from a shell,
    from Python with arq alone and over HTTP, the queries, and honcho running
    the Procfile: every step works as written, every enqueued URL lands once, and the records
    example's records land."""
    session = await run_docs("README.md", copy_repo=True)
    assert session.returncode == 0, session.stderr[-4000:]
    assert "harvester " in session.stdout  # --version
    assert "'documents': 1" in session.stdout  # the Python example's summary
    assert '"status_url"' in session.stdout  # the HTTP example's 202

    async def all_landed() -> bool:
        return await _landed(pool) >= {"items/1", "items/2", "items/3", "items/5"}

    await wait_until(all_landed, timeout=60)

    async def all_pages_landed() -> bool:
        pages = await pool.fetch("SELECT url, page FROM documents WHERE source = 'pages'")
        return len(pages) == 9  # three pages for each of the three styles

    await wait_until(all_pages_landed, timeout=60)

    async def records_landed() -> bool:
        rows = await pool.fetch("SELECT key FROM records WHERE source = 'orders' ORDER BY key")
        return [r["key"] for r in rows] == ["o-1", "o-2"]

    await wait_until(records_landed, timeout=60)
    assert (
        await pool.fetchval(
            "SELECT count(*) - count(DISTINCT (job_id, url, COALESCE(page, 0))) FROM documents"
        )
        == 0
    )
    assert "items/1" in session.stdout  # psql printed the landed rows
    assert "Traceback" not in session.stderr


async def test_the_credential_profile_examples_land_with_their_credentials(
    run_docs: Callable[..., Awaitable[Session]], upstream: Upstream, pool: asyncpg.Pool
) -> None:
    """One example per profile type: each URL lands only because its credential was sent (the
    upstream answers 401 without it), and the query key is not in the stored URL."""
    upstream.locks.update(
        crm=Lock("bearer", "your-crm-token"),
        weather=Lock("header", "your-weather-key", "X-Api-Key"),
        maps=Lock("query", "your-maps-key", "key"),
        reports=Lock("basic", "your-reports-password", "harvester"),
        billing=Lock("oauth2_client_credentials"),
    )
    upstream.tokens.client_secret = "your-billing-client-secret"
    session = await run_docs("README.md#apis")
    assert session.returncode == 0, session.stderr[-4000:]
    wanted = {"crm/contacts", "weather/today", "maps/geocode?q=Berlin", "reports/daily"}
    wanted.add("billing/invoices")

    async def all_landed() -> bool:
        return await _landed(pool, "apis") == wanted

    await wait_until(all_landed, timeout=60)
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 0
    assert upstream.tokens.fetches == 1
    assert "Traceback" not in session.stderr


async def test_the_job_contract_examples_enqueue_once(
    run_docs: Callable[..., Awaitable[Session]], redis: aioredis.Redis
) -> None:
    """The raw-Redis recipe enqueues one job (the transaction is a no-op when repeated), and
    the shell examples print job ids, the second --job-id-prefix run the same ids; the requests
    example enqueues its three requests as POSTs with their bodies and the header."""
    session = await run_docs("docs/jobs.md")
    assert session.returncode == 0, session.stderr[-4000:]
    job = json.loads(await redis.get("arq:job:catalog-raw-0002"))
    assert job["k"]["source"] == "catalog"
    ids = session.stdout.split()
    assert ids.count("nightly-2026-11-30-0") == 2
    searches = json.loads(await redis.get("arq:job:search-2026-11-30-0"))["k"]
    assert (searches["method"], searches["headers"]) == ("POST", {"Accept": "application/json"})
    assert [r.get("json") for r in searches["requests"]] == [
        {"q": "chairs", "page": 1},
        {"q": "tables", "page": 1},
        None,
    ]


async def test_the_scheduled_sources_examples_register_sources(
    run_docs: Callable[..., Awaitable[Session]],
    pool: asyncpg.Pool,
    upstream: Upstream,
    arq_queue: ArqRedis,
    make_settings: Callable[..., Settings],
    make_worker: Callable[..., Worker],
) -> None:
    """The CLI and SQL examples register the sources they name; disable takes effect. Polled
    twice, the changes feed sends its header and, the second time, the cursor the first
    poll's body gave; the search source is a POST with its body."""
    session = await run_docs("docs/scheduled-sources.md")
    assert session.returncode == 0, session.stderr[-4000:]
    rows = dict(await pool.fetch("SELECT url, enabled FROM sources"))
    assert len(rows) == 6
    assert [enabled for url, enabled in rows.items() if url.endswith("/v1/fx")] == [False]
    for _ in range(2):
        await pool.execute("UPDATE sources SET next_due_at = now()")
        await polls.enqueue_due(pool, arq_queue, make_settings())
        await make_worker().main()
    changes = upstream.hits_for("/api/v1/changes")
    assert [h.path.removeprefix("/api/v1/changes") for h in changes] == ["", "?since=1"]
    assert {h.headers["Accept"] for h in changes} == {"application/vnd.x+json"}
    (search, *_) = upstream.hits_for("/api/v1/search")
    assert (search.method, json.loads(search.body)) == (
        "POST",
        {"query": "in_stock:true", "size": 100},
    )


async def test_the_data_model_queries_run(
    run_docs: Callable[..., Awaitable[Session]], pool: asyncpg.Pool
) -> None:
    """Every SQL example of the data model runs against the migrated schema."""
    try:
        session = await run_docs("docs/data-model.md")
        assert session.returncode == 0, session.stderr[-4000:]
    finally:
        await pool.execute("DROP INDEX IF EXISTS documents_sku_idx, documents_body_gin")


async def test_the_readme_results_examples_query_verify_a_webhook_and_read_the_stream(
    run_docs: Callable[..., Awaitable[Session]], pool: asyncpg.Pool, upstream: Upstream
) -> None:
    """The query of a URL's current copy prints the copy landed last; the receiver gets the
    job's webhook, checks it and keeps it; openssl finds its signature; the stream consumer
    reads the job's chunk."""
    url = upstream.url("/api/items/1")
    for job_id, body in (("old", b'{"v": "older-copy"}'), ("new", b'{"v": "newer-copy"}')):
        await write_chunk(
            pool, Chunk(job_id, "catalog", [Fetched(url, 200, body, 1, 1)]), max_url_length=8192
        )
    session = await run_docs("README.md#results")
    assert session.returncode == 0, session.stderr[-4000:]
    assert "newer-copy" in session.stdout
    assert "older-copy" not in session.stdout
    assert "signature ok" in session.stdout
    body = json.loads((session.folder / "webhook.json").read_bytes())
    assert (body["status"], body["documents"], body["urls"]) == ("complete", 1, 1)
    assert f"{body['job_id']} 1 outcomes, 1 documents" in session.stdout


async def test_the_http_api_examples_enqueue_over_http(
    run_docs: Callable[..., Awaitable[Session]], redis: aioredis.Redis
) -> None:
    """`harvester api` starts as shown; the curl examples get a 202, the batch's status and
    the OpenAPI paths."""
    session = await run_docs("docs/http-api.md")
    assert session.returncode == 0, session.stderr[-4000:]
    assert '"job_id":"catalog-api-0001"' in session.stdout.replace(" ", "")
    assert "'/batches'" in session.stdout
    assert await redis.exists("arq:job:catalog-api-0001")


async def test_the_dashboard_session_example_logs_in_and_needs_its_csrf_token(
    run_docs: Callable[..., Awaitable[Session]],
) -> None:
    """The dashboard page's curl session logs in with the token, reads the status with the
    cookie, is refused a POST without the CSRF token and allowed it with the token."""
    session = await run_docs("docs/dashboard.md")
    assert session.returncode == 0, session.stderr[-4000:]
    lines = session.stdout.replace(" ", "").splitlines()
    assert lines[0] == '{"auth":"session"}'
    assert lines[1] == "arq:queue"
    assert lines[2] == "403"
    assert lines[3] == '{"changed":0,"enabled":true}'


async def test_the_command_line_tour_runs(run_docs: Callable[..., Awaitable[Session]]) -> None:
    """Each command of the CLI page's example runs and exits 0."""
    session = await run_docs("docs/cli.md")
    assert session.returncode == 0, session.stderr[-4000:]
    assert "'queue'" in session.stdout  # status --json, read by Python
    assert "api.example.com" in session.stdout  # hosts list


async def test_the_upgrading_example_migrates_once(
    run_docs: Callable[..., Awaitable[Session]],
) -> None:
    """`harvester migrate` twice, then the table of applied migrations."""
    session = await run_docs("docs/upgrading.md")
    assert session.returncode == 0, session.stderr[-4000:]
    assert "applied 0 migration(s)" in session.stdout
    assert re.search(r"^\s*1 \| documents\s*$", session.stdout, re.M), session.stdout


def _shape(text: str) -> str:
    """A line as a pattern: numbers (and timings) may differ, the words may not."""
    return re.escape(text.strip()).replace(r"\ ", r"\s+")


def _matches(expected: str, actual: str) -> list[str]:
    """The lines of ``expected`` that do not appear, numbers aside, in ``actual``."""
    missing = []
    for line in expected.splitlines():
        pattern = re.sub(r"\d+(?:\\\.\d+)?", r"[\\d.]+", _shape(line))
        if line.strip() and not re.search(pattern, actual):
            missing.append(line)
    return missing


def test_the_demo_prints_what_the_readme_and_the_sources_page_show(
    repo_root: Path, tmp_path: Path
) -> None:
    """`harvester demo` starts its own servers, lands every URL and prints the summary the
    README shows and the poll lines the scheduled-sources page shows (figures aside)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_")}
    argv = [
        "--urls",
        "1001",
        "--batch-size",
        "250",
        "--sources",
        "30",
        "--dir",
        str(tmp_path / "demo"),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "worker", "demo", *argv],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    readme = examples(repo_root / "README.md")["demo"].code
    sources = examples(repo_root / "docs" / "scheduled-sources.md")["demo-sources"].code
    assert _matches(readme, result.stdout) == []
    assert _matches(sources, result.stdout) == []
    assert "URLs enqueued     1002" in result.stdout
    assert "Traceback" not in result.stderr


def test_the_job_result_shown_has_the_summarys_fields(repo_root: Path) -> None:
    """The result the job contract page shows is a summary, field for field."""
    shown = json.loads(examples(repo_root / "docs" / "jobs.md")["job-result"].code)
    summary = BatchSummary(
        job_id="j", source=None, urls=0, distinct_urls=0, already_done=0, documents=0
    )
    assert list(shown) == list(summary.as_dict())
