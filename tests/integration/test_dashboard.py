"""The dashboard of `harvester api`, in a real browser (Debian's headless Chromium driven by
Playwright) against a real API, worker, Postgres and Redis: login, a job's progress, failures
and their replay, sources, logout, CSRF, the stale state; and its headers over plain HTTP.

Screenshots of each page, at 1280x800 and at a phone's width, are left under the test's
temporary folder (``screenshots/``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.helpers import closed_port, with_port
from tests.helpers.browser import DESKTOP, chromium, screenshots
from tests.helpers.upstream import Upstream
from tests.helpers.workers import long_running, running
from worker.ops.api import create_app, serve
from worker.ops.middleware import CSP
from worker.queue.client import enqueue_urls
from worker.scheduling import sources
from worker.settings import Settings

TOKEN = "t0ken-for-the-dashboard"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The page polls every second here (5 by default), so a few seconds of work show as movement.
INTERVAL = "/?interval=1"
_READ_BAR = "s => { const b = document.querySelector(s); return b ? [b.value, b.max] : null; }"

StartAPI = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_api(
    make_settings: Callable[..., Settings], arq_queue: ArqRedis, pool: asyncpg.Pool
) -> AsyncIterator[StartAPI]:
    """Start the API on a loopback port (settings overrides as keywords, a token unless given)
    and return its base URL; it stops after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> str:
            app = create_app(make_settings(**{"api_token": TOKEN, **overrides}))
            port = await stack.enter_async_context(serve(app, "127.0.0.1", 0))
            return f"http://127.0.0.1:{port}"

        yield start


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport=DESKTOP)
    try:
        yield ctx
    finally:
        await ctx.close()


async def _log_in(page: Page, base: str) -> None:
    await page.goto(base + INTERVAL)
    await page.fill("#token", TOKEN)
    await page.click("#login button[type=submit]")
    await expect(page.locator("#overview")).to_be_visible()
    await expect(page.locator("#live")).to_have_text("live")


async def _page(page: Page, name: str) -> None:
    await page.click(f'nav a[data-page="{name}"]')
    await expect(page.locator(f"section#{name}")).to_be_visible()


def _worker(make_settings: Callable[..., Settings], **overrides: Any) -> Worker:
    """A long-running worker that lands each URL as its own chunk, two at a time."""
    return long_running(make_settings(copy_chunk_rows=1, concurrency=2, per_host=2, **overrides))


async def test_log_in_watch_a_job_progress_then_log_out(
    start_api: StartAPI,
    context: BrowserContext,
    make_settings: Callable[..., Settings],
    arq_queue: ArqRedis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    """/ without a session is the login form alone (a wrong token says so); the token opens
    the dashboard with an HttpOnly, SameSite=Strict cookie and the token nowhere in the page;
    a running job's progress bar moves, then the job is listed done; after logout the old
    cookie is refused."""
    base = await start_api()
    page = await context.new_page()
    await page.goto(base + INTERVAL)
    await expect(page.locator("#login")).to_be_visible()
    assert await page.locator("#overview").count() == 0
    await screenshots(page, tmp_path / "screenshots", "login")
    await page.fill("#token", "not-the-token-at-all")
    await page.click("#login button[type=submit]")
    await expect(page.locator("#login-error")).to_have_text("wrong token")

    await _log_in(page, base)
    (cookie,) = await context.cookies()
    assert cookie["name"] == "harvester_session"
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Strict", False)
    assert TOKEN not in cookie["value"]
    assert await page.evaluate("document.cookie") == ""
    assert TOKEN not in await page.content()

    await _page(page, "jobs")
    urls = [upstream.url(f"/slow/p{i}?delay=0.4") for i in range(20)]
    (job,) = await enqueue_urls(arq_queue, urls, job_id_prefix="dash")
    bar = f'#running tr[data-job="{job}"] progress'
    done = page.locator(f'#recent tr[data-job="{job}"]')
    seen: list[float] = []
    async with running(_worker(make_settings)):
        deadline = time.monotonic() + 60
        while await done.count() == 0 or "state-ok" not in (
            await done.get_attribute("class") or ""
        ):
            assert time.monotonic() < deadline, f"the job never showed done; bar values {seen}"
            # One read of value and max: the page re-renders the row between two reads, and
            # a bar seen by one read can be gone (the job done) by the next.
            state = await page.evaluate(_READ_BAR, bar)
            if state is not None:
                value, most = state
                assert most == 20
                if not seen or seen[-1] != value:
                    seen.append(value)
                if len(seen) == 2:
                    await screenshots(page, tmp_path / "screenshots", "jobs")
            await page.wait_for_timeout(100)
    moving = [v for v in seen if 0 < v < 20]
    assert moving, f"the bar never showed a job part done: {seen}"
    assert seen == sorted(seen), f"the bar went backwards: {seen}"
    await expect(done).to_contain_text("documents: 20")
    await expect(page.locator(f'#running tr[data-job="{job}"]')).to_have_count(0)

    await _page(page, "overview")
    await expect(page.locator("#workers tbody tr")).not_to_have_count(0)
    await expect(page.locator("#chart-throughput rect.ok").first).to_be_attached()
    await screenshots(page, tmp_path / "screenshots", "overview")

    old = (await context.cookies())[0]
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    await context.add_cookies([old])  # the cookie a thief kept: the session is over
    response = await page.request.get(f"{base}/status")
    assert response.status == 401
    await page.goto(base + "/")
    await expect(page.locator("#login")).to_be_visible()


async def test_failures_by_kind_filtered_and_one_replayed(
    start_api: StartAPI,
    context: BrowserContext,
    make_worker: Callable[..., Worker],
    arq_queue: ArqRedis,
    pool: asyncpg.Pool,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    """After a batch with failures the chart and the list show them by kind; the list filters
    by kind, job and host; replaying a selected failure (confirmed) makes a replay job, and
    once a worker has run it the URL has landed and the row says who replayed it."""
    flaky = upstream.url("/flaky/comeback?fails=1&status=404")
    urls = [
        upstream.url("/status/404"),
        upstream.url("/status/500"),
        upstream.url("/invalid-json"),
        upstream.url("/json/fine"),
        flaky,
    ]
    (job,) = await enqueue_urls(arq_queue, urls, job_id_prefix="broken")
    await enqueue_urls(arq_queue, [upstream.url("/status/410")], job_id_prefix="other")
    await make_worker().main()

    base = await start_api()
    page = await context.new_page()
    await _log_in(page, base)
    await expect(page.locator("#t-failures")).to_have_text("5")
    await _page(page, "failures")
    legend = page.locator("#legend-failures")
    await expect(legend).to_contain_text("http_status")
    await expect(legend).to_contain_text("invalid_json")
    assert await page.locator("#chart-failures rect").count() >= 2
    rows = page.locator("#failure-list tbody tr[data-id]")
    await expect(rows).to_have_count(5)
    await screenshots(page, tmp_path / "screenshots", "failures")

    await page.select_option("#f-kind", "invalid_json")
    await page.click("#failure-filter button[type=submit]")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("invalid_json")
    await page.select_option("#f-kind", "")
    await page.fill("#f-job", job)
    await page.click("#failure-filter button[type=submit]")
    await expect(rows).to_have_count(4)
    await page.fill("#f-host", "elsewhere.example")
    await page.click("#failure-filter button[type=submit]")
    await expect(rows).to_have_count(0)
    await page.fill("#f-host", "127.0.0.1")
    await page.click("#failure-filter button[type=submit]")
    await expect(rows).to_have_count(4)
    target = page.locator(f'#failure-list tbody tr[data-url="{flaky}"]')
    await target.locator("summary").click()
    await expect(target.locator("pre")).to_be_visible()

    await target.locator("input[type=checkbox]").check()
    await page.click("#replay")
    await expect(page.locator("#confirm-replay")).to_be_visible()
    await page.click("#confirm-ok")
    await expect(page.locator("#replay-result")).to_contain_text("replayed 1 URL(s) as replay-")
    replay_job = await pool.fetchval("SELECT replayed_by FROM fetch_failures WHERE url = $1", flaky)
    assert replay_job is not None
    await expect(target).to_contain_text(replay_job)
    await expect(target.locator("input[type=checkbox]")).to_be_disabled()

    await make_worker().main()
    landed = await pool.fetchval(
        "SELECT count(*) FROM documents WHERE url = $1 AND job_id = $2", flaky, replay_job
    )
    assert landed == 1
    await _page(page, "jobs")
    replayed = page.locator(f'#recent tr[data-job="{replay_job}"]')
    await expect(replayed).to_have_class("state-ok")
    await expect(replayed).to_contain_text("documents: 1")


async def test_sources_hosts_and_a_post_without_its_csrf_token(
    start_api: StartAPI, context: BrowserContext, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A source is disabled and enabled again from its page; a POST from the page's own
    script without X-CSRF-Token is refused 403 and changes nothing, the same POST with it
    works; the host policies page draws."""
    await sources.add(pool, ["https://api.example.com/feed"], every=900, name="feed")
    base = await start_api()
    page = await context.new_page()
    await _log_in(page, base)
    await _page(page, "sources")
    source = page.locator("#source-list tbody tr").first
    await expect(source).to_contain_text("https://api.example.com/feed")
    await screenshots(page, tmp_path / "screenshots", "sources")
    await source.locator("button").click()
    await expect(source.locator("button")).to_have_text("Enable")
    assert await pool.fetchval("SELECT enabled FROM sources") is False
    await source.locator("button").click()
    await expect(source.locator("button")).to_have_text("Disable")
    assert await pool.fetchval("SELECT enabled FROM sources") is True

    post = """async (csrf) => {
        const headers = {"Content-Type": "application/json"};
        if (csrf) headers["X-CSRF-Token"] = csrf;
        const r = await fetch("/sources/enabled", {method: "POST", headers,
            body: JSON.stringify({ids: [1], enabled: false})});
        return [r.status, await r.json()];
    }"""
    status, body = await page.evaluate(post, None)
    assert status == 403
    assert "CSRF" in body["error"]
    assert await pool.fetchval("SELECT enabled FROM sources") is True
    status, _ = await page.evaluate(post, "a-guessed-token")
    assert status == 403
    csrf = await page.evaluate("fetch('/session').then(r => r.json()).then(s => s.csrf)")
    status, body = await page.evaluate(post, csrf)
    assert (status, body) == (200, {"changed": 1, "enabled": False})

    await _page(page, "hosts")
    await expect(page.locator("#default-rps")).to_contain_text("HARVESTER_HOST_RPS")
    await screenshots(page, tmp_path / "screenshots", "hosts")


async def test_the_page_turns_stale_when_the_api_loses_redis(
    start_api: StartAPI, context: BrowserContext, services: Any
) -> None:
    """With Redis unreachable the page says it is stale and why, instead of showing old
    numbers as if they were live."""
    base = await start_api(redis_url=with_port(services.redis_url, closed_port()))
    page = await context.new_page()
    await page.goto(base + INTERVAL)
    await page.fill("#token", TOKEN)
    await page.click("#login button[type=submit]")
    await expect(page.locator("#stale")).to_be_visible(timeout=15_000)
    await expect(page.locator("#stale")).to_contain_text("Redis is unavailable")
    await expect(page.locator("#live")).to_have_text("stale")


async def _logins_refused(s: aiohttp.ClientSession, base: str) -> float:
    async with s.get(base + "/metrics") as r:
        text = await r.text()
    (line,) = (x for x in text.splitlines() if x.startswith("harvester_api_logins_refused_total "))
    return float(line.split()[1])


async def test_headers_compression_bearer_and_open_mode(start_api: StartAPI) -> None:
    """Every answer has the strict CSP; JSON and static files are compressed, the CSRF token's
    answer is not; the bearer token still reads the JSON without a session; a login from
    another site is refused, a wrong token counted in /metrics; behind HTTPS the cookie is
    Secure; without a token the dashboard is open on loopback, with no login."""
    base = await start_api()
    gzip = {"Accept-Encoding": "gzip"}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for path in ("/", "/static/app.js", "/static/app.css", "/healthz"):
            async with s.get(base + path, headers=gzip) as r:
                assert r.headers["Content-Security-Policy"] == CSP, path
                assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with s.get(base + "/static/app.js", headers=gzip) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers["Vary"] == "Accept-Encoding"
        async with s.get(base + "/status/history", headers={**gzip, **AUTH}) as r:
            assert r.status == 200
            assert r.headers["Content-Encoding"] == "gzip"
        async with s.get(base + "/session", headers={**gzip, **AUTH}) as r:
            assert "Content-Encoding" not in r.headers
        async with s.get(base + "/status") as r:
            assert r.status == 401
        async with s.get(base + "/static/nope.js") as r:
            assert r.status == 404
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/status", headers=AUTH) as r:
            assert set(await r.json()) >= {"queued", "workers", "failures_last_hour"}
        login = {"token": TOKEN}
        cross = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        async with s.post(base + "/login", json=login, headers=cross) as r:
            assert r.status == 403
        refused = await _logins_refused(s, base)
        async with s.post(base + "/login", json={"token": "a-wrong-token-guessed"}) as r:
            assert r.status == 401
        assert await _logins_refused(s, base) == refused + 1
        # Behind a TLS proxy that rewrites Host (nginx's default): the page's origin is the
        # proxy's, not the Host the API sees; the browser says same-origin, and that is enough.
        behind = {
            "X-Forwarded-Proto": "https",
            "Origin": "https://harvester.example.com",
            "Sec-Fetch-Site": "same-origin",
        }
        async with s.post(base + "/login", json=login, headers=behind) as r:
            assert r.status == 200
            cookie = r.headers["Set-Cookie"]
            assert "Secure" in cookie
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert TOKEN not in cookie

    open_base = await start_api(api_token=None)
    async with aiohttp.ClientSession() as s:
        async with s.get(open_base + "/") as r:
            assert 'src="/static/app.js"' in await r.text()
        async with s.get(open_base + "/session") as r:
            assert await r.json() == {"auth": "open", "csrf": None}
        async with s.post(open_base + "/login", json={"token": "x"}) as r:
            assert r.status == 404
        evil = {"Host": "evil.example"}
        async with s.get(open_base + "/status", headers=evil) as r:
            assert r.status == 403


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/status/history?minutes=0", None, 400, "'minutes' must be"),
        ("GET", "/status/history?minutes=x", None, 400, "'minutes' must be"),
        ("GET", "/failures?job=a%00b", None, 400, "control characters"),
        ("GET", "/failures?limit=5000", None, 400, "'limit' must be"),
        ("GET", "/status/progress?job=" + "j" * 300, None, 400, "at most 256"),
        ("POST", "/failures/replay", b'{"ids": "1"}', 422, "'ids' must be"),
        ("POST", "/failures/replay", b'{"ids": [true]}', 422, "'ids' must be"),
        ("POST", "/failures/replay", b'{"ids": []}', 422, "'ids' must be"),
        ("POST", "/failures/replay", b'{"ids": [9223372036854775808]}', 422, "'ids' must be"),
        ("POST", "/sources/enabled", b'{"ids": [9223372036854775808]}', 422, "'ids' must be"),
        ("POST", "/failures/replay", b"[1]", 400, "JSON object"),
        ("POST", "/failures/replay", b"{nope", 400, "not valid JSON"),
        ("POST", "/sources/enabled", b'{"ids": [1]}', 422, "'enabled' must be"),
    ],
)
async def test_bad_queries_and_bodies_get_a_clear_4xx(
    start_api: StartAPI,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong parameter or body is a JSON 4xx naming it, never a 500 or a traceback."""
    base = await start_api()
    headers = {**AUTH, "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, base + path, data=body, headers=headers) as r,
    ):
        assert r.status == status
        assert message in (await r.json())["error"]
    assert "Traceback" not in caplog.text


HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


async def test_hostile_data_is_shown_as_text_never_run(
    start_api: StartAPI, context: BrowserContext, pool: asyncpg.Pool
) -> None:
    """Failure details, URLs, job ids and source names come from upstreams and callers: markup
    in them is shown as text on every page, and none of it runs (nor would the CSP let it)."""
    await pool.execute(
        """INSERT INTO fetch_failures (job_id, url, source, error, status, attempts, detail)
           VALUES ($1, $2, $1, 'http_status', 500, 1, $1)""",
        "job" + HOSTILE,
        "http://hostile.example/" + HOSTILE,
    )
    await sources.add(pool, ["http://hostile.example/feed"], every=60, name="feed" + HOSTILE)
    base = await start_api()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await _log_in(page, base)
    await _page(page, "failures")
    row = page.locator("#failure-list tbody tr[data-id]")
    await expect(row).to_have_count(1)
    await row.locator("summary").click()
    await expect(row).to_contain_text(HOSTILE)
    await _page(page, "sources")
    await expect(page.locator("section#sources")).to_contain_text("feed" + HOSTILE)
    await _page(page, "jobs")
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("img[src=x], main script").count() == 0
    assert errors == []
