"""Forward proxies: requests go through a real proxy (proxy.py on loopback, basic auth), HTTPS
by CONNECT; a wrong password is a `proxy` failure; the SSRF guard judges the TARGET, which the
connector never sees, at every hop; NO_PROXY is honoured with HARVESTER_TRUST_ENV.

The proxy listens on 127.0.0.1 and a second upstream on 127.0.0.2, so a test can open only the
target's address (127.0.0.2/32) and show that the proxy's own loopback address needs no opening.
"""

from __future__ import annotations

import base64
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import trustme

from tests.helpers import Services, closed_port, wait_until
from tests.helpers.cli import cli_env, harvester
from tests.helpers.forward_proxy import PASSWORD, USER, ForwardProxy
from tests.helpers.locks import Lock
from tests.helpers.spellings import Trap
from tests.helpers.upstream import Upstream
from worker.engine.credentials import load_credentials
from worker.engine.fetch import Fetcher
from worker.engine.outbox import Due
from worker.engine.outcomes import Failed, Fetched, Outcome
from worker.engine.session import create_session
from worker.engine.webhooks import Deliverer
from worker.settings import Settings

PASSWORD_ENV = "HARVESTER_TEST_PROXY_PASSWORD"
ONLY_SECOND = "127.0.0.2/32"  # the second upstream's address; the proxy's 127.0.0.1 is not in it


@pytest.fixture(scope="module")
async def forward_proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy(tmp_path_factory.mktemp("forward-proxy"))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture
async def second() -> AsyncIterator[Upstream]:
    """An upstream on 127.0.0.2."""
    async with Upstream(host="127.0.0.2").serving() as up:
        yield up


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    """A test CA and its certificate as a PEM file (what HARVESTER_CA_FILE names)."""
    authority = trustme.CA()
    pem = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(pem))
    return authority, pem


@pytest.fixture
async def tls_upstream(ca: tuple[trustme.CA, Path]) -> AsyncIterator[Upstream]:
    """An HTTPS upstream on 127.0.0.2 whose certificate the test CA signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca[0].issue_cert("127.0.0.2").configure_cert(context)
    async with Upstream(host="127.0.0.2", ssl_context=context).serving() as up:
        yield up


@pytest.fixture
def proxied(
    make_settings: Callable[..., Settings],
    forward_proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Settings]:
    """Settings that send every request through the proxy with its password (by reference);
    ``password=`` puts another one in the variable."""

    def factory(password: str = PASSWORD, **overrides: object) -> Settings:
        monkeypatch.setenv(PASSWORD_ENV, password)
        base: dict[str, object] = {
            "proxy_url": forward_proxy.url(),
            "proxy_password_env": PASSWORD_ENV,
            "allowed_networks": ONLY_SECOND,
        }
        return make_settings(**{**base, **overrides})

    return factory


async def _fetch_once(settings: Settings, url: str) -> Outcome:
    """Fetch ``url`` on a session of its own, closed after: proxy.py writes its access line
    when the connection closes."""
    session = create_session(settings)
    try:
        return await Fetcher(session, settings).fetch(url)
    finally:
        await session.close()


def _hostport(url: str) -> str:
    return url.split("://", 1)[1]


async def _carried(proxy: ForwardProxy, method: str, target: str) -> None:
    """Wait until the proxy's access log shows it carried ``method target`` (it writes the line
    when the request is done)."""

    async def seen() -> bool:
        return (method, target) in proxy.carried()

    await wait_until(seen)


def _failed(out: Outcome) -> tuple[str, int | None, int]:
    assert isinstance(out, Failed), out
    return out.kind, out.status, out.attempts


async def test_a_get_goes_through_the_proxy_with_its_password(
    second: Upstream,
    forward_proxy: ForwardProxy,
    proxied: Callable[..., Settings],
) -> None:
    """The proxy carries the request; the proxy's own loopback address needed no opening; the
    target never sees the proxy's credentials."""
    out = await _fetch_once(proxied(), second.url("/json/via-proxy"))
    assert isinstance(out, Fetched), out
    await _carried(forward_proxy, "GET", _hostport(second.url("/json/via-proxy")))
    [hit] = second.hits_for("/json/via-proxy")
    assert "Proxy-Authorization" not in hit.headers


async def test_https_goes_through_a_connect_tunnel_trusting_the_ca_file(
    tls_upstream: Upstream,
    ca: tuple[trustme.CA, Path],
    forward_proxy: ForwardProxy,
    proxied: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """An https:// URL is fetched through CONNECT, verified against HARVESTER_CA_FILE; without
    that file the certificate is refused (a `connect` failure, not retried)."""
    url = tls_upstream.url("/json/tunnelled")
    out = await _fetch_once(proxied(ca_file=ca[1]), url)
    assert isinstance(out, Fetched), out
    await _carried(forward_proxy, "CONNECT", _hostport(tls_upstream.base))
    # Inside the tunnel the proxy cannot strip anything: its credentials went on the CONNECT only.
    [hit] = tls_upstream.hits_for("/json/tunnelled")
    assert "Proxy-Authorization" not in hit.headers
    untrusted = await make_fetcher(proxied()).fetch(url)
    assert _failed(untrusted) == ("connect", None, 1)
    assert "certificate" in untrusted.detail.lower()  # type: ignore[union-attr]


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_wrong_or_missing_proxy_password_is_a_proxy_failure(
    scheme: str,
    second: Upstream,
    tls_upstream: Upstream,
    ca: tuple[trustme.CA, Path],
    forward_proxy: ForwardProxy,
    proxied: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """HTTP 407 from the proxy (to a request or to CONNECT) is kind `proxy`, status 407, not
    retried, and nothing reaches the target."""
    target = second if scheme == "http" else tls_upstream
    url = target.url("/json/refused")
    wrong = await make_fetcher(proxied(password="not-the-password", ca_file=ca[1])).fetch(url)
    assert _failed(wrong) == ("proxy", 407, 1)
    assert "HARVESTER_PROXY_PASSWORD_ENV" in wrong.detail  # type: ignore[union-attr]
    anonymous = proxied(
        ca_file=ca[1], proxy_url=forward_proxy.url(user=None), proxy_password_env=None
    )
    missing = await make_fetcher(anonymous).fetch(url)
    assert _failed(missing) == ("proxy", 407, 1)
    assert target.hits == []


async def test_an_unreachable_proxy_is_a_proxy_failure(
    second: Upstream,
    proxied: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """A proxy that refuses connections is kind `proxy` (transient: retried, then recorded)."""
    s = proxied(proxy_url=f"http://harvester-proxy-user@127.0.0.1:{closed_port()}")
    out = await make_fetcher(s).fetch(second.url("/json/no-proxy"))
    assert _failed(out) == ("proxy", None, 3)
    assert second.hits == []


async def test_the_guard_judges_the_target_behind_the_proxy(
    upstream: Upstream,
    second: Upstream,
    forward_proxy: ForwardProxy,
    proxied: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """A loopback target, by address or by name, is `blocked` before the proxy is asked, and
    the same fetch works once HARVESTER_ALLOWED_NETWORKS opens loopback."""
    closed = make_fetcher(proxied(allowed_networks=""))
    refused = [
        second.url("/json/inside"),
        upstream.url("/json/inside").replace("127.0.0.1", "localhost"),
        forward_proxy.url(user=None) + "/",  # the proxy itself, as a target
    ]
    for url in refused:
        assert _failed(await closed.fetch(url)) == ("blocked", None, 1), url
    opened = await _fetch_once(proxied(allowed_networks="127.0.0.0/8"), refused[0])
    assert isinstance(opened, Fetched), opened
    await _carried(forward_proxy, "GET", _hostport(refused[0]))
    assert [h.path for h in second.hits] == ["/json/inside"]  # only the allowed fetch
    assert upstream.hits == []
    assert not any("/json/inside" in t and "localhost" in t for _, t in forward_proxy.carried())


async def test_every_redirect_hop_through_the_proxy_is_judged(
    second: Upstream,
    proxied: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """Redirects from an allowed target to loopback (a trap on [::1] that counts connections,
    by address and by a name that resolves to it) and to the metadata address are `blocked` at
    the hop: the trap sees no connection."""
    trap = Trap()
    await trap.start()
    try:
        fetcher = make_fetcher(proxied())
        to_trap = second.url(f"/redirect-to?location=http://[::1]:{trap.port}/")
        by_name = second.url(f"/redirect-to?location=http://localhost:{trap.port}/")
        to_metadata = second.url("/redirect-to?location=http://169.254.169.254/latest/")
        for url in (to_trap, by_name, to_metadata):
            assert _failed(await fetcher.fetch(url)) == ("blocked", None, 1), url
    finally:
        await trap.stop()
    assert trap.connections == 0
    assert len(second.hits) == 3  # each first hop was fetched, through the proxy


async def test_trust_env_honours_http_proxy_and_no_proxy(
    upstream: Upstream,
    second: Upstream,
    forward_proxy: ForwardProxy,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With HARVESTER_TRUST_ENV, HTTP_PROXY (credentials inline, as is the convention) carries
    requests except to NO_PROXY's hosts, which are fetched directly."""
    for name in ("HTTPS_PROXY", "https_proxy", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    port = forward_proxy.port
    monkeypatch.setenv("HTTP_PROXY", f"http://harvester-proxy-user:{PASSWORD}@127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "example.com, 127.0.0.2")
    s = make_settings(trust_env=True)
    proxied_out = await _fetch_once(s, upstream.url("/json/env-proxied"))
    direct_out = await _fetch_once(s, second.url("/json/env-direct"))
    assert isinstance(proxied_out, Fetched), proxied_out
    assert isinstance(direct_out, Fetched), direct_out
    await _carried(forward_proxy, "GET", _hostport(upstream.url("/json/env-proxied")))
    assert not any("env-direct" in target for _, target in forward_proxy.carried())
    # What the targets saw, which needs no wait for the proxy's log: proxy.py adds Via.
    assert "Via" in upstream.hits_for("/json/env-proxied")[0].headers
    assert "Via" not in second.hits_for("/json/env-direct")[0].headers


async def _redis_text(redis: aioredis.Redis) -> bytes:
    """Every key and value in the Redis database, as bytes to search."""
    parts: list[bytes] = []
    async for key in redis.scan_iter():
        parts.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            parts.append(await redis.get(key) or b"")
        elif kind == "hash":
            parts.extend(b"%s=%s" % kv for kv in (await redis.hgetall(key)).items())
        elif kind == "zset":
            parts.extend(await redis.zrange(key, 0, -1))
        elif kind == "list":
            parts.extend(await redis.lrange(key, 0, -1))
        elif kind == "set":
            parts.extend(await redis.smembers(key))
    return b"\n".join(parts)


async def test_the_proxy_password_is_in_no_log_redis_key_or_row(
    services: Services,
    second: Upstream,
    tls_upstream: Upstream,
    ca: tuple[trustme.CA, Path],
    forward_proxy: ForwardProxy,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
) -> None:
    """Workers logging at DEBUG fetch through the proxy with the right password, then with a
    wrong one: neither password (nor its Basic encoding) is in their logs, `harvester status`,
    any Redis key or value, or any Postgres row."""
    wrong = "wrong-proxy-pw-77c1d0"
    urls = [
        second.url("/json/s1"),
        tls_upstream.url("/json/s2"),
        second.url("/status/404"),
        second.url("/redirect-to?location=http://169.254.169.254/latest/"),
    ]
    output = ""
    for password, prefix in ((PASSWORD, "right"), (wrong, "wrong")):
        env = cli_env(
            services,
            HARVESTER_PROXY_URL=forward_proxy.url(),
            HARVESTER_PROXY_PASSWORD_ENV="PROXY_PW",
            PROXY_PW=password,
            HARVESTER_ALLOWED_NETWORKS=ONLY_SECOND,
            HARVESTER_CA_FILE=str(ca[1]),
            HARVESTER_LOG_LEVEL="DEBUG",
        )
        stdin = "\n".join(urls) + "\n"
        enq = await harvester("enqueue", "-", "--job-id-prefix", prefix, env=env, stdin=stdin)
        assert enq.returncode == 0, enq.stderr
        run = await harvester("worker", "--burst", env=env)
        assert run.returncode == 0, run.stderr
        status = await harvester("status", env=env)
        output += enq.stdout + enq.stderr + run.stdout + run.stderr + status.stdout + status.stderr

    rows = await pool.fetch(
        """SELECT job_id, 'document' AS kind, status FROM documents
           UNION ALL SELECT job_id, error, status FROM fetch_failures"""
    )
    got = sorted((r["job_id"].split("-")[0], r["kind"], r["status"]) for r in rows)
    assert got == sorted(
        [("right", "document", 200)] * 2
        + [("right", "http_status", 404), ("right", "blocked", None)]
        + [("wrong", "proxy", 407)] * 4
    )
    assert "job.started" in output
    tables = ""
    for table in ("documents", "fetch_failures", "sources", "replays"):
        tables += "\n".join(r[0] for r in await pool.fetch(f"SELECT t::text FROM {table} t"))
    in_redis = await _redis_text(redis)
    for secret in (PASSWORD, wrong):
        basic = base64.b64encode(f"{USER}:{secret}".encode()).decode()
        for text in (secret, basic):
            assert text[:10] not in output, text
            assert text[:10] not in tables, text
            assert text[:10].encode() not in in_redis, text


async def test_an_oauth2_token_is_fetched_through_the_proxy_too(
    second: Upstream,
    forward_proxy: ForwardProxy,
    proxied: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The token endpoint is reached the way every fetch is: through the proxy, its target
    judged first; the token then opens the API behind the same proxy."""
    monkeypatch.setenv("TEST_CLIENT_SECRET", "proxied-client-secret")
    second.tokens.client_secret = "proxied-client-secret"
    second.locks["billing"] = Lock("oauth2_client_credentials")
    path = tmp_path / "credentials.toml"
    path.write_text(
        f'[profiles.billing]\ntype = "oauth2_client_credentials"\n'
        f'hosts = ["{_hostport(second.base)}"]\ntoken_url = "{second.url("/oauth/token")}"\n'
        'client_id = "harvester"\nclient_secret_env = "TEST_CLIENT_SECRET"\n'
    )
    settings = proxied()
    session = create_session(settings)
    try:
        fetcher = Fetcher(session, settings)
        out = await fetcher.fetch(
            second.url("/api/billing/invoices"), profile=load_credentials(path).get("billing")
        )
    finally:
        await session.close()
    assert isinstance(out, Fetched), out
    # proxy.py logs one line per connection, and the GET then reuses the POST's.
    await _carried(forward_proxy, "POST", _hostport(second.url("/oauth/token")))
    assert second.tokens.fetches == 1


async def test_a_webhook_goes_through_the_proxy_its_receiver_judged_first(
    second: Upstream,
    forward_proxy: ForwardProxy,
    proxied: Callable[..., Settings],
    pool: asyncpg.Pool,
) -> None:
    """A completion webhook takes the fetches' way out: through the proxy, signed, without the
    proxy's credentials reaching the receiver; a receiver on an address the guard forbids is
    refused for good before the proxy is asked."""
    settings = proxied(webhook_secret="whsec-proxied-0123456789abcdef")
    session = create_session(settings)
    try:
        deliverer = Deliverer(session, pool, settings)
        hook = second.url("/echo/hook")
        sent = await deliverer.post(Due(1, uuid.uuid4(), hook, b'{"job_id":"p"}', 1, 0.0))
        refused = await deliverer.post(
            Due(2, uuid.uuid4(), "http://localhost:9/hook", b"{}", 1, 0.0)
        )
    finally:
        await session.close()
    assert (sent.ok, sent.status) == (True, 200)
    await _carried(forward_proxy, "POST", _hostport(hook))
    [hit] = second.hits_for("/echo/hook")
    assert hit.headers["Harvester-Signature"].startswith("t=")
    assert "Proxy-Authorization" not in hit.headers
    assert (refused.ok, refused.final) == (False, True)
    assert "localhost:9" not in {target for _, target in forward_proxy.carried()}
