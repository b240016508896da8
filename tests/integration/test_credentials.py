"""Credential profiles against an upstream that demands them: each type lands with the right
secret and fails without it, OAuth2 tokens are fetched once, renewed and refreshed on a 401, a
redirect elsewhere never carries a secret, and unknown profile names are refused."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from arq.worker import Worker

from tests.helpers import TEST_QUEUE, Services
from tests.helpers.cli import InProcess, cli_env, harvester
from tests.helpers.locks import PROFILE_TYPES, SECRET_ENV
from tests.helpers.upstream import Upstream
from worker import logs as logs_module
from worker.engine.auth import Authorizer
from worker.engine.credentials import Credentials, load_credentials
from worker.engine.fetch import Fetcher
from worker.engine.outcomes import Failed, Fetched
from worker.engine.session import address_policy
from worker.queue.serialization import deserialize
from worker.scheduling import polls
from worker.settings import Settings

OAUTH = "oauth2_client_credentials"


async def _outcomes(pool: asyncpg.Pool) -> dict[str, tuple[str, int | None]]:
    """url -> ('document' or failure kind, status) for every row."""
    rows = await pool.fetch(
        """SELECT url, 'document' AS kind, status FROM documents
           UNION ALL SELECT url, error, status FROM fetch_failures"""
    )
    return {r["url"]: (r["kind"], r["status"]) for r in rows}


async def test_each_profile_type_lands_with_its_secret_and_fails_without(
    credentials_file: Path,
    upstream: Upstream,
    arq_queue: ArqRedis,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
) -> None:
    """Right credentials: a document. A wrong secret: 403 (OAuth2: the token endpoint refuses
    the client, an `auth` failure). No profile: 401."""
    expected: dict[str, tuple[str, int | None]] = {}
    for kind in PROFILE_TYPES:
        right, wrong, none = (upstream.url(f"/api/{kind}/{n}") for n in ("right", "wrong", "none"))
        await arq_queue.enqueue_job("fetch_batch", urls=[right], auth=kind)
        await arq_queue.enqueue_job("fetch_batch", urls=[wrong], auth=f"{kind}-wrong")
        await arq_queue.enqueue_job("fetch_batch", urls=[none])
        expected[right] = ("document", 200)
        expected[wrong] = ("auth", None) if kind == OAUTH else ("http_status", 403)
        expected[none] = ("http_status", 401)
    worker = make_worker(credentials=credentials_file)
    await worker.main()
    assert worker.jobs_failed == 0
    assert await _outcomes(pool) == expected
    assert upstream.tokens.fetches == 2  # one for the right client, one refused


@pytest.fixture
async def fetcher(
    make_fetcher: Callable[[Settings], Fetcher], make_settings: Callable[..., Settings]
) -> Fetcher:
    return make_fetcher(make_settings(max_attempts=2))


@pytest.fixture
def profiles(credentials_file: Path) -> Credentials:
    return load_credentials(credentials_file)


async def test_an_oauth2_token_is_fetched_once_for_many_requests(
    fetcher: Fetcher, profiles: Credentials, upstream: Upstream
) -> None:
    """Twenty concurrent requests and five more after them share one token fetch."""
    oauth = profiles.get(OAUTH)
    first = await asyncio.gather(
        *(fetcher.fetch(upstream.url(f"/api/{OAUTH}/c{i}"), profile=oauth) for i in range(20))
    )
    then = [
        await fetcher.fetch(upstream.url(f"/api/{OAUTH}/s{i}"), profile=oauth) for i in range(5)
    ]
    assert all(isinstance(o, Fetched) for o in (*first, *then))
    assert upstream.tokens.fetches == 1


async def test_an_oauth2_token_is_renewed_shortly_before_it_expires(
    fetcher: Fetcher, profiles: Credentials, upstream: Upstream, settings: Settings
) -> None:
    """A token of 100 s is used for 89 s and renewed at 90 s (a tenth of its life early)."""
    upstream.tokens.ttl = 100.0
    now = [1000.0]
    fetcher.auth = Authorizer(fetcher.auth._session, address_policy(settings), clock=lambda: now[0])
    oauth = profiles.get(OAUTH)
    assert isinstance(await fetcher.fetch(upstream.url(f"/api/{OAUTH}/a"), profile=oauth), Fetched)
    now[0] += 89
    assert isinstance(await fetcher.fetch(upstream.url(f"/api/{OAUTH}/b"), profile=oauth), Fetched)
    assert upstream.tokens.fetches == 1
    now[0] += 1
    assert isinstance(await fetcher.fetch(upstream.url(f"/api/{OAUTH}/c"), profile=oauth), Fetched)
    assert upstream.tokens.fetches == 2


async def test_a_401_refreshes_the_token_once_and_retries_the_request_once(
    fetcher: Fetcher, profiles: Credentials, upstream: Upstream
) -> None:
    """A revoked token: one new token and the request once more, which lands. A URL that
    refuses every token costs one refresh and two requests, then a 401 failure."""
    oauth = profiles.get(OAUTH)
    assert isinstance(await fetcher.fetch(upstream.url(f"/api/{OAUTH}/x"), profile=oauth), Fetched)
    upstream.tokens.revoke_all()
    again = await fetcher.fetch(upstream.url(f"/api/{OAUTH}/y"), profile=oauth)
    assert isinstance(again, Fetched)
    assert upstream.tokens.fetches == 2
    assert upstream.counts[f"/api/{OAUTH}/y"] == 2
    refused = await fetcher.fetch(upstream.url("/status/401"), profile=oauth)
    assert isinstance(refused, Failed)
    assert (refused.kind, refused.status) == ("http_status", 401)
    assert upstream.tokens.fetches == 3
    assert upstream.counts["/status/401"] == 2


async def test_a_token_endpoint_failure_is_an_auth_failure_without_the_secret(
    fetcher: Fetcher, profiles: Credentials, upstream: Upstream
) -> None:
    """A 503 from the token endpoint: retried as transient, then an `auth` failure naming the
    profile and the status, never the client secret; the API itself is never asked."""
    upstream.tokens.status = 503
    outcome = await fetcher.fetch(upstream.url(f"/api/{OAUTH}/z"), profile=profiles.get(OAUTH))
    assert isinstance(outcome, Failed)
    assert outcome.kind == "auth"
    assert "HTTP 503" in outcome.detail
    assert repr(OAUTH) in outcome.detail
    assert SECRET_ENV["TEST_CLIENT_SECRET"] not in outcome.detail
    assert upstream.tokens.fetches == 2  # max_attempts
    assert upstream.counts[f"/api/{OAUTH}/z"] == 0


async def test_a_token_url_at_a_private_address_is_refused_by_the_guard(
    tmp_path: Path, fetcher: Fetcher, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token endpoint passes the SSRF guard like any URL: a link-local token_url is an
    `auth` failure, and nothing is sent to it or to the API."""
    monkeypatch.setenv("TEST_CLIENT_SECRET", SECRET_ENV["TEST_CLIENT_SECRET"])
    path = tmp_path / "meta.toml"
    host = upstream.base.removeprefix("http://")
    path.write_text(
        f'[profiles.meta]\ntype = "{OAUTH}"\nhosts = ["{host}"]\n'
        'token_url = "http://169.254.169.254/latest/token"\nclient_id = "c"\n'
        'client_secret_env = "TEST_CLIENT_SECRET"\n'
    )
    profile = load_credentials(path).get("meta")
    outcome = await fetcher.fetch(upstream.url("/json/a"), profile=profile)
    assert isinstance(outcome, Failed)
    assert outcome.kind == "auth"
    assert "169.254.169.254" in outcome.detail
    assert "not allowed" in outcome.detail
    assert upstream.hits == []


@pytest.mark.parametrize("kind", PROFILE_TYPES)
async def test_a_redirect_to_another_port_or_host_never_carries_the_secret(
    kind: str, fetcher: Fetcher, profiles: Credentials, upstream: Upstream
) -> None:
    """The same upstream reached as another host (localhost) or another port gets no
    credential after a redirect; a redirect on the same host and port keeps it."""
    other = Upstream()
    await other.start()
    try:
        port = upstream.base.rsplit(":", 1)[1]
        targets = [other.url("/json/port"), f"http://localhost:{port}/json/host"]
        for target in targets:
            url = upstream.url(f"/redirect-to?location={target}")
            assert isinstance(await fetcher.fetch(url, profile=profiles.get(kind)), Fetched)
        same = upstream.url(f"/redirect-to?location=/api/{kind}/same")
        assert isinstance(await fetcher.fetch(same, profile=profiles.get(kind)), Fetched)
    finally:
        await other.stop()
    landed = [*other.hits, *upstream.hits_for("/json/host")]
    assert len(landed) == 2
    for hit in landed:
        assert "Authorization" not in hit.headers
        assert "X-Api-Key" not in hit.headers
        assert "api_key" not in hit.path
        assert not any(s in str(hit) for s in SECRET_ENV.values())


async def test_the_worker_refuses_an_unknown_profile_and_fetches_nothing(
    credentials_file: Path,
    upstream: Upstream,
    arq_queue: ArqRedis,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
) -> None:
    """A job naming a profile the worker does not have fails at once, saying so."""
    job = await arq_queue.enqueue_job(
        "fetch_batch", urls=[upstream.url("/json/a")], auth="nope", _job_id="unknown-auth"
    )
    assert job is not None
    worker = make_worker(credentials=credentials_file)
    await worker.main()
    assert worker.jobs_failed == 1
    info = await Job(
        "unknown-auth", arq_queue, _queue_name=TEST_QUEUE, _deserializer=deserialize
    ).result_info()
    assert info is not None
    assert not info.success
    assert "BadJobError" in str(info.result)
    assert "no credential profile named 'nope'" in str(info.result)
    assert upstream.hits == []
    assert await _outcomes(pool) == {}


async def test_enqueue_refuses_an_unknown_profile_when_it_has_the_file(
    credentials_file: Path,
    services: Services,
    cli: InProcess,
    upstream: Upstream,
    arq_queue: ArqRedis,
) -> None:
    """With HARVESTER_CREDENTIALS, `enqueue --auth` refuses an unknown name (exit 2, nothing
    enqueued) and takes a known one; without the file it cannot know, and passes."""
    env = cli_env(services, HARVESTER_CREDENTIALS=str(credentials_file))
    urls = upstream.url("/json/a") + "\n"
    refused = await cli("enqueue", "-", "--auth", "nope", env=env, stdin=urls)
    assert refused.returncode == 2
    assert "no credential profile named 'nope'" in refused.stderr
    assert refused.stdout == ""
    assert await arq_queue.queued_jobs() == []
    known = await cli("enqueue", "-", "--auth", "bearer", env=env, stdin=urls)
    assert known.returncode == 0, known.stderr
    unknowable = await cli("enqueue", "-", "--auth", "nope", env=cli_env(services), stdin=urls)
    assert unknowable.returncode == 0, unknowable.stderr
    assert sorted(j.kwargs["auth"] for j in await arq_queue.queued_jobs()) == ["bearer", "nope"]


async def test_a_worker_with_a_bad_credentials_file_does_not_start(
    tmp_path: Path, services: Services
) -> None:
    """An inline secret stops `harvester worker` with one line naming the profile and the
    field: exit 2, no traceback, and the secret is not repeated."""
    path = tmp_path / "bad.toml"
    path.write_text('[profiles.crm]\ntype = "bearer"\nhosts = ["a.example"]\ntoken = "inl-42"\n')
    env = {**os.environ, **cli_env(services, HARVESTER_CREDENTIALS=str(path))}
    run = await harvester("worker", "--burst", env=env)
    assert run.returncode == 2, run.stderr
    assert "profile 'crm'" in run.stderr
    assert "'token'" in run.stderr
    assert "Traceback" not in run.stderr
    assert "inl-42" not in run.stderr + run.stdout


async def test_a_scheduled_source_polls_with_its_profile(
    credentials_file: Path,
    services: Services,
    cli: InProcess,
    upstream: Upstream,
    arq_queue: ArqRedis,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    make_worker: Callable[..., Worker],
) -> None:
    """`sources add --auth` stores the profile name (an unknown one is refused when the file is
    known); each poll job carries it, apart from sources of the same name without it, and the
    poll lands with the credential."""
    env = cli_env(services, HARVESTER_CREDENTIALS=str(credentials_file))
    locked, plain = upstream.url("/api/bearer/polled"), upstream.url("/json/plain")
    refused = await cli("sources", "add", locked, "--every", "1m", "--auth", "nope", env=env)
    assert refused.returncode == 2
    assert "no credential profile named 'nope'" in refused.stderr
    added = await cli(
        "sources", "add", locked, "--every", "1m", "--source", "s", "--auth", "bearer", env=env
    )
    assert added.returncode == 0, added.stderr
    assert (
        await cli("sources", "add", plain, "--every", "1m", "--source", "s", env=env)
    ).returncode == 0
    listed = await cli("sources", "list", "--json", env=env)
    assert '"auth":"bearer"' in listed.stdout
    done = await polls.enqueue_due(pool, arq_queue, make_settings())
    assert len(done.jobs) == 2
    jobs = {tuple(j.kwargs["urls"]): j.kwargs.get("auth") for j in await arq_queue.queued_jobs()}
    assert jobs == {(locked,): "bearer", (plain,): None}
    await make_worker(credentials=credentials_file).main()
    assert await _outcomes(pool) == {locked: ("document", 200), plain: ("document", 200)}


async def test_a_walk_stores_and_follows_next_links_without_an_echoed_query_secret(
    credentials_file: Path,
    upstream: Upstream,
    arq_queue: ArqRedis,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
) -> None:
    """An API that builds its next links from the signed URL (``?api_key=...&page=2``): each
    page is asked with the key once, and no page_url or next_url stores it."""
    secret = SECRET_ENV["TEST_QUERY_KEY"]
    url = upstream.url("/pages/link/keyed?n=3")
    await arq_queue.enqueue_job(
        "fetch_batch", urls=[url], auth="query", paginate={"next": "link"}, _job_id="keyed"
    )
    worker = make_worker(credentials=credentials_file)
    await worker.main()
    rows = await pool.fetch(
        "SELECT page, page_url, next_url FROM documents WHERE job_id = 'keyed' ORDER BY page"
    )
    assert [r["page"] for r in rows] == [1, 2, 3]
    stored = " ".join(f"{r['page_url']} {r['next_url']}" for r in rows)
    assert secret not in stored
    assert "api_key" not in stored
    asked = [h.path for h in upstream.hits if h.path.startswith("/pages/link/keyed")]
    assert len(asked) == 3
    assert all(p.count("api_key=") == 1 and secret in p for p in asked)


async def test_replaced_tokens_leave_the_scrubber_after_one_more_renewal(
    fetcher: Fetcher, profiles: Credentials, upstream: Upstream, settings: Settings
) -> None:
    """The current token and the one before it are scrubbed; older ones are retired, so the
    scrubber's pattern does not grow with every renewal of a long-running worker."""
    upstream.tokens.ttl = 100.0
    now = [1000.0]
    fetcher.auth = Authorizer(fetcher.auth._session, address_policy(settings), clock=lambda: now[0])
    oauth = profiles.get(OAUTH)
    for i in range(4):
        out = await fetcher.fetch(upstream.url(f"/api/{OAUTH}/r{i}"), profile=oauth)
        assert isinstance(out, Fetched)
        now[0] += 95  # past the renewal point: the next fetch takes a new token
    first, second, third, fourth = list(upstream.tokens.issued)[-4:]
    assert len({first, second, third, fourth}) == 4
    held = logs_module.secrets.values
    assert {third, fourth} <= held
    assert not {first, second} & held
    assert logs_module.redact(f"echo {first} {fourth}") == "echo " + first + " [redacted]"
