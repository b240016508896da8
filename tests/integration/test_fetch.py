"""Fetching: helpers in isolation, then the Fetcher against the scripted local upstream."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from tests.helpers import wait_until
from tests.helpers.upstream import Feed, Upstream
from worker.engine.fetch import Fetcher
from worker.engine.outcomes import Failed, Fetched, NotModified, Validators, _validator
from worker.settings import Settings

# -- pure helpers ------------------------------------------------------------------------------


# -- against the upstream ----------------------------------------------------------------------

FetcherFactory = Callable[[Settings], Fetcher]


async def test_good_json_is_fetched(
    upstream: Upstream, settings: Settings, make_fetcher: FetcherFactory
) -> None:
    """A 200 JSON answer becomes a document with the body as served."""
    out = await make_fetcher(settings).fetch(upstream.url("/json/a"))
    assert isinstance(out, Fetched)
    assert (out.status, out.attempts) == (200, 1)
    assert out.body == Upstream._body("a")


async def test_gzip_is_decompressed(
    upstream: Upstream, settings: Settings, make_fetcher: FetcherFactory
) -> None:
    """A gzip-encoded body lands decompressed."""
    out = await make_fetcher(settings).fetch(upstream.url("/gzip/z"))
    assert isinstance(out, Fetched)
    assert out.body == Upstream._body("z")


async def test_gzip_bomb_is_cut_at_the_decompressed_cap(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """The cap counts bytes after decompression, so a small bomb is refused."""
    out = await make_fetcher(make_settings(max_body_bytes=1024 * 1024)).fetch(
        upstream.url("/gzip-bomb")
    )
    assert isinstance(out, Failed)
    assert out.kind == "too_large"
    assert "after decompression" in out.detail


async def test_streamed_body_over_cap_is_too_large(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """A body without Content-Length is cut once it passes the cap; not retried."""
    fetcher = make_fetcher(make_settings(max_body_bytes=100_000))
    out = await fetcher.fetch(upstream.url("/big?size=5000000"))
    assert isinstance(out, Failed)
    assert (out.kind, out.attempts) == ("too_large", 1)


@pytest.mark.parametrize(
    ("path", "kind", "status"),
    [
        ("/status/404", "http_status", 404),
        ("/invalid-json", "invalid_json", 200),
        ("/nul", "invalid_json", 200),
        ("/empty", "invalid_json", 200),
        ("/html", "content_type", 200),
        ("/loop", "redirect", 302),
    ],
)
async def test_permanent_failures_are_not_retried(
    upstream: Upstream,
    settings: Settings,
    make_fetcher: FetcherFactory,
    path: str,
    kind: str,
    status: int | None,
) -> None:
    """Permanent failures get their kind after exactly one attempt."""
    out = await make_fetcher(settings).fetch(upstream.url(path))
    assert isinstance(out, Failed)
    assert (out.kind, out.status, out.attempts) == (kind, status, 1)
    if path != "/loop":
        assert upstream.counts[path] == 1


async def test_invalid_urls_fail_without_a_request(
    settings: Settings, make_fetcher: FetcherFactory
) -> None:
    """Unparseable, non-http and host-less URLs are invalid_url with zero attempts."""
    fetcher = make_fetcher(settings)
    for url in ["not a url", "ftp://example.com/x", "http://", "javascript:alert(1)"]:
        out = await fetcher.fetch(url)
        assert isinstance(out, Failed), url
        assert (out.kind, out.attempts) == ("invalid_url", 0), url


async def test_transient_503_is_retried_until_success(
    upstream: Upstream, settings: Settings, make_fetcher: FetcherFactory
) -> None:
    """Two 503s then 200: a document with attempts = 3."""
    out = await make_fetcher(settings).fetch(upstream.url("/flaky/k1?fails=2&status=503"))
    assert isinstance(out, Fetched)
    assert out.attempts == 3
    assert upstream.counts["/flaky/k1"] == 3


async def test_500_gives_up_after_max_attempts(
    upstream: Upstream, settings: Settings, make_fetcher: FetcherFactory
) -> None:
    """A URL that always answers 500 fails as http_status after max_attempts requests."""
    out = await make_fetcher(settings).fetch(upstream.url("/status/500"))
    assert isinstance(out, Failed)
    assert (out.kind, out.status, out.attempts) == ("http_status", 500, settings.max_attempts)
    assert upstream.counts["/status/500"] == settings.max_attempts


async def test_retry_after_is_honoured(
    upstream: Upstream, settings: Settings, make_fetcher: FetcherFactory
) -> None:
    """A 429 with Retry-After: 1 is retried no sooner than a second later (backoff is off)."""
    out = await make_fetcher(settings).fetch(upstream.url("/retry-after/r1?seconds=1"))
    assert isinstance(out, Fetched)
    assert out.attempts == 2
    first, second = upstream.hits_for("/retry-after/r1")
    assert second.at - first.at >= 0.95


async def test_retry_after_is_capped(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """A huge Retry-After waits no longer than HARVESTER_RETRY_AFTER_CAP."""
    fetcher = make_fetcher(make_settings(retry_after_cap=0.0))
    out = await fetcher.fetch(upstream.url("/retry-after/r2?seconds=3600"))
    assert isinstance(out, Fetched)
    first, second = upstream.hits_for("/retry-after/r2")
    assert second.at - first.at < 5


async def test_a_429_with_an_absurd_retry_after_date_is_retried_not_internal(
    upstream: Upstream, settings: Settings, make_fetcher: FetcherFactory
) -> None:
    """A Retry-After date that overflows is ignored: the 429 is retried as usual and lands."""
    from urllib.parse import quote

    absurd = quote("Fri, 31 Dec 2020 23:59:59 +99999999999999999")
    out = await make_fetcher(settings).fetch(upstream.url(f"/retry-after/r4?seconds={absurd}"))
    assert isinstance(out, Fetched), out
    assert out.attempts == 2


async def test_retry_never_waits_past_the_time_budget(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """A Retry-After longer than what is left of HARVESTER_RETRY_MAX_TIME ends the retries at once."""
    import time

    fetcher = make_fetcher(make_settings(retry_max_time=2.0))
    started = time.monotonic()
    out = await fetcher.fetch(upstream.url("/retry-after/r3?seconds=30"))
    assert isinstance(out, Failed)
    assert (out.kind, out.status, out.attempts) == ("http_status", 429, 1)
    assert time.monotonic() - started < 2.0
    assert upstream.counts["/retry-after/r3"] == 1


@pytest.mark.parametrize(
    "url", ["http://a..b/", "http://xn--a.com/", "http://" + "a" * 64 + ".com/"]
)
async def test_malformed_host_names_are_invalid_urls(
    settings: Settings, make_fetcher: FetcherFactory, url: str
) -> None:
    """Host names IDNA refuses end as invalid_url; they never raise out of fetch()."""
    out = await make_fetcher(settings).fetch(url)
    assert isinstance(out, Failed)
    assert out.kind == "invalid_url"


async def test_connection_refused_is_connect_and_retried(
    settings: Settings, make_fetcher: FetcherFactory
) -> None:
    """A port nobody listens on gives kind connect after max_attempts."""
    from worker.devtools.embedded import free_port

    out = await make_fetcher(settings).fetch(f"http://127.0.0.1:{free_port()}/x")
    assert isinstance(out, Failed)
    assert (out.kind, out.attempts) == ("connect", settings.max_attempts)


async def test_slow_upstream_times_out(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """A response slower than the read timeout is a timeout failure."""
    fetcher = make_fetcher(make_settings(read_timeout=0.2, max_attempts=1))
    out = await fetcher.fetch(upstream.url("/slow/s?delay=5"))
    assert isinstance(out, Failed)
    assert out.kind == "timeout"


async def test_redirects_are_followed_within_the_limit(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """Up to max_redirects hops are followed; one more is a redirect failure."""
    fetcher = make_fetcher(make_settings(max_redirects=3))
    ok = await fetcher.fetch(upstream.url("/redirect/3"))
    assert isinstance(ok, Fetched)
    too_many = await fetcher.fetch(upstream.url("/redirect/4"))
    assert isinstance(too_many, Failed)
    assert too_many.kind == "redirect"


async def test_redirect_to_other_scheme_is_refused(
    upstream: Upstream, settings: Settings, make_fetcher: FetcherFactory
) -> None:
    """Only http and https are followed."""
    out = await make_fetcher(settings).fetch(
        upstream.url("/redirect-to?location=file:///etc/passwd")
    )
    assert isinstance(out, Failed)
    assert out.kind == "redirect"
    assert "file" in out.detail


async def test_loopback_is_blocked_by_default(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """Without HARVESTER_ALLOWED_NETWORKS the upstream on 127.0.0.1 is never contacted."""
    fetcher = make_fetcher(make_settings(allowed_networks=""))
    out = await fetcher.fetch(upstream.url("/json/secret"))
    by_name = await fetcher.fetch(upstream.url("/json/byname").replace("127.0.0.1", "localhost"))
    assert isinstance(out, Failed)
    assert (out.kind, out.attempts) == ("blocked", 1)
    assert isinstance(by_name, Failed)
    assert by_name.kind == "blocked"
    assert upstream.hits == []


async def test_redirect_to_a_blocked_address_is_refused(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """Every hop is checked: a redirect to the metadata address is blocked."""
    out = await make_fetcher(make_settings()).fetch(
        upstream.url("/redirect-to?location=http://169.254.169.254/latest/meta-data/")
    )
    assert isinstance(out, Failed)
    assert out.kind == "blocked"


async def test_in_flight_requests_never_exceed_concurrency(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """With a slow upstream, the upstream sees at most HARVESTER_CONCURRENCY at once."""
    import asyncio

    fetcher = make_fetcher(make_settings(concurrency=4, per_host=4))
    outs = await asyncio.gather(
        *(fetcher.fetch(upstream.url(f"/slow/{i}?delay=0.1")) for i in range(20))
    )
    assert all(isinstance(o, Fetched) for o in outs)
    assert upstream.max_in_flight == 4


async def test_cancelled_fetches_give_their_slots_back(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """A fetch cancelled while its request is out (holding the slot it took without waiting)
    and one cancelled while queued for a slot both leave every slot free."""
    fetcher = make_fetcher(make_settings(concurrency=1, per_host=1))
    sent = asyncio.create_task(fetcher.fetch(upstream.url("/gate/a")))
    queued = asyncio.create_task(fetcher.fetch(upstream.url("/gate/b")))

    async def in_flight() -> bool:
        return bool(upstream.hits_for("/gate/a"))

    await wait_until(in_flight)
    assert fetcher._slots.free == 0
    for task in (queued, sent):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert fetcher._slots.free == 1
    assert not upstream.hits_for("/gate/b")
    assert isinstance(await fetcher.fetch(upstream.url("/json/a")), Fetched)


# -- conditional requests, politeness ------------------------------------------------------------


async def test_a_body_waits_for_admission_inside_its_request_slot(
    upstream: Upstream, make_settings: Callable[..., Settings], make_fetcher: FetcherFactory
) -> None:
    """Until admit() returns, the body's request slot stays taken: bodies waiting for the
    pipeline's byte budget never outnumber HARVESTER_CONCURRENCY."""
    fetcher = make_fetcher(make_settings(concurrency=1, per_host=1))
    asked: list[int] = []
    go = asyncio.Event()

    async def admit(size: int) -> None:
        asked.append(size)
        await go.wait()

    fetch = asyncio.create_task(fetcher.fetch(upstream.url("/json/a"), admit=admit))

    async def waiting_for_room() -> bool:
        return bool(asked)

    try:
        await wait_until(waiting_for_room)
        assert fetcher._slots.free == 0
    finally:
        go.set()
    out = await fetch
    assert isinstance(out, Fetched)
    assert asked == [len(out.body)]
    assert fetcher._slots.free == 1


async def test_user_agent_names_harvester_and_is_configurable(
    upstream: Upstream, make_fetcher: FetcherFactory, make_settings: Callable[..., Settings]
) -> None:
    """Requests carry harvester's User-Agent by default, or HARVESTER_USER_AGENT's."""
    await make_fetcher(make_settings()).fetch(upstream.url("/json/ua1"))
    await make_fetcher(make_settings(user_agent="acme-sync/2 (ops@acme.example)")).fetch(
        upstream.url("/json/ua2")
    )
    agents = [h.headers.get("User-Agent") for h in upstream.hits]
    assert agents[0] is not None
    assert agents[0].startswith("harvester/")
    assert agents[1] == "acme-sync/2 (ops@acme.example)"


async def test_conditional_request_sends_validators_and_reads_304(
    upstream: Upstream, make_fetcher: FetcherFactory, settings: Settings
) -> None:
    """With validators, If-None-Match / If-Modified-Since are sent and a 304 is NotModified."""
    upstream.feeds["c"] = Feed(etag=True, last_modified=True, max_age=120)
    fetcher = make_fetcher(settings)
    first = await fetcher.fetch(upstream.url("/feed/c"), validators=Validators())
    assert isinstance(first, Fetched)
    assert first.meta is not None
    assert (first.meta.etag, first.meta.fresh_for) == ('"v1"', 120)
    again = await fetcher.fetch(
        upstream.url("/feed/c"), validators=Validators(first.meta.etag, first.meta.last_modified)
    )
    assert isinstance(again, NotModified)
    assert again.meta.etag == '"v1"'
    sent = upstream.hits[-1].headers
    assert sent["If-None-Match"] == '"v1"'
    assert sent["If-Modified-Since"] == first.meta.last_modified
    assert "If-None-Match" not in upstream.hits[0].headers


async def test_a_304_without_validators_is_a_failure(
    upstream: Upstream, make_fetcher: FetcherFactory, settings: Settings
) -> None:
    """An unconditional request answered 304 has no body to land: it fails as http_status."""
    outcome = await make_fetcher(settings).fetch(upstream.url("/status/304"))
    assert isinstance(outcome, Failed)
    assert (outcome.kind, outcome.status) == ("http_status", 304)


async def test_429_with_retry_after_slows_the_host_for_other_fetches(
    upstream: Upstream, make_fetcher: FetcherFactory, make_settings: Callable[..., Settings]
) -> None:
    """A 429 + Retry-After on one URL holds back a different URL to the same host (another
    job's fetch, sharing the process's fetcher) until the pause is over."""
    fetcher = make_fetcher(make_settings(max_attempts=1))
    throttled = await fetcher.fetch(upstream.url("/retry-after/t?seconds=1"), priority=1)
    assert isinstance(throttled, Failed)
    assert throttled.retry_after == 1.0
    told_at = upstream.hits[-1].at
    other = await fetcher.fetch(upstream.url("/json/other-job"), priority=2)
    assert isinstance(other, Fetched)
    assert upstream.hits[-1].at - told_at >= 0.9


async def test_host_rps_spaces_requests_across_concurrent_fetches(
    upstream: Upstream, make_fetcher: FetcherFactory, make_settings: Callable[..., Settings]
) -> None:
    """HARVESTER_HOST_RPS=20: ten concurrent fetches to one host span at least 9/20 s."""
    fetcher = make_fetcher(make_settings(host_rps=20))
    outcomes = await asyncio.gather(
        *(fetcher.fetch(upstream.url(f"/json/paced-{i}")) for i in range(10))
    )
    assert all(isinstance(o, Fetched) for o in outcomes)
    times = sorted(h.at for h in upstream.hits)
    assert times[-1] - times[0] >= 9 / 20 * 0.9
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.04


async def test_validators_that_cannot_be_stored_are_dropped(
    upstream: Upstream, make_fetcher: FetcherFactory, settings: Settings
) -> None:
    """An ETag with non-ASCII bytes is not kept (it could not be stored or sent back)."""
    upstream.feeds["bad-etag"] = Feed(etag=True)
    fetcher = make_fetcher(settings)
    good = await fetcher.fetch(upstream.url("/feed/bad-etag"), validators=Validators())
    assert isinstance(good, Fetched)
    assert good.meta is not None
    assert good.meta.etag == '"v1"'
    assert _validator('"caf\udce9"') is None
    assert _validator("x" * 2000) is None
    assert _validator("Wed, 21 Oct 2015 07:28:00 GMT") == "Wed, 21 Oct 2015 07:28:00 GMT"
