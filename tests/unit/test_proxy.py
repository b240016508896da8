"""Proxy settings, routing and the guard's part in it, without a network."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from yarl import URL

from worker.engine.guard import (
    AddressPolicy,
    BlockedAddressError,
    GuardedResolver,
    ProxyEndpoints,
    TargetCheck,
    guarded_socket_factory,
)
from worker.engine.proxy import ProxyRouter, Route, bypasses
from worker.errors import BlockedError, ConfigError, ConnectError
from worker.proxyurl import parse_no_proxy
from worker.settings import Settings

SECRET = "pw-unit-9f8e7d"


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("UNIT_PROXY_PASSWORD", SECRET)
    return "UNIT_PROXY_PASSWORD"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"proxy_url": f"http://u:{SECRET}@proxy:3128"},
            "HARVESTER_PROXY_URL: must not hold a password: put it in an environment variable",
        ),
        ({"proxy_url": "https://proxy:3128"}, "HARVESTER_PROXY_URL: must start with http://"),
        ({"proxy_url": "http://proxy"}, "HARVESTER_PROXY_URL: needs a host and a port"),
        ({"proxy_url": "http://proxy:99999"}, "HARVESTER_PROXY_URL: cannot read the host"),
        ({"proxy_url": "http://proxy:3128/path"}, "HARVESTER_PROXY_URL: must be http://host:port"),
        (
            {"proxy_url": "http://proxy:3128", "trust_env": True},
            "set HARVESTER_PROXY_URL or HARVESTER_TRUST_ENV=true, not both",
        ),
        (
            {"proxy_password_env": "UNIT_PROXY_PASSWORD"},
            "HARVESTER_PROXY_PASSWORD_ENV is set without HARVESTER_PROXY_URL",
        ),
        (
            {"proxy_url": "http://proxy:3128", "proxy_password_env": "UNIT_PROXY_PASSWORD"},
            "HARVESTER_PROXY_URL needs a user name (http://user@host:port)",
        ),
        (
            {"proxy_url": "http://u@proxy:3128", "proxy_password_env": "UNSET_UNIT_VARIABLE"},
            "HARVESTER_PROXY_PASSWORD_ENV names UNSET_UNIT_VARIABLE, which is not set",
        ),
        (
            {"proxy_url": "http://u@proxy:3128", "proxy_password_env": SECRET},
            "HARVESTER_PROXY_PASSWORD_ENV: must be the name of an environment variable",
        ),
        ({"trust_env": True, "https_proxy": "proxy:3128"}, "HTTPS_PROXY (HARVESTER_TRUST_ENV)"),
        ({"ca_file": "/nonexistent/ca.pem"}, "HARVESTER_CA_FILE: cannot read CA certificates"),
    ],
)
def test_bad_proxy_settings_are_refused_naming_the_variable_never_the_secret(
    make_settings: Callable[..., Settings],
    password_env: str,
    overrides: dict[str, object],
    message: str,
) -> None:
    """One clear line per mistake; a password written where it does not belong is not echoed."""
    with pytest.raises(ConfigError) as caught:
        make_settings(**overrides)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_ca_file_that_is_not_pem_is_refused(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """HARVESTER_CA_FILE must hold certificates (a TLS failure later would look like an outage)."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="HARVESTER_CA_FILE: cannot read CA certificates"):
        make_settings(ca_file=bad)


def test_the_proxy_password_is_read_by_reference_and_never_shown(
    make_settings: Callable[..., Settings], password_env: str
) -> None:
    """The password comes from the named variable; neither the settings nor the route repr it."""
    s = make_settings(proxy_url="http://alice@proxy.internal:3128", proxy_password_env=password_env)
    [route] = {Route.from_spec(spec) for spec in s.proxies.values()}
    assert route.proxy == URL("http://proxy.internal:3128")
    assert route.authorization == "Basic YWxpY2U6cHctdW5pdC05ZjhlN2Q="  # alice:pw-unit-9f8e7d
    for text in (repr(s), str(s), repr(s.proxies), repr(route), str(s.model_dump())):
        assert SECRET not in text
        assert "YWxpY2U6" not in text


def test_credentials_go_on_the_request_for_http_and_on_the_connect_for_https() -> None:
    """Through a plain-HTTP proxy the request itself carries Proxy-Authorization; an https://
    request carries none (its CONNECT does), so the target never sees it."""
    route = Route(URL("http://proxy:3128"), "Basic abc")
    sent, to_proxy = route.headers(URL("http://api.example.com/x"), {"If-None-Match": '"v1"'})
    assert sent == {"If-None-Match": '"v1"', "Proxy-Authorization": "Basic abc"}
    assert to_proxy is None
    sent, to_proxy = route.headers(URL("https://api.example.com/x"), None)
    assert (sent, to_proxy) == (None, {"Proxy-Authorization": "Basic abc"})
    assert Route(URL("http://proxy:3128")).headers(URL("http://a/"), None) == (None, None)


def test_without_a_proxy_there_is_no_router(settings: Settings) -> None:
    """No proxy configured: no router, so a request pays nothing for proxies."""
    assert ProxyRouter.from_settings(settings) is None


def test_trust_env_routes_by_scheme_and_honours_no_proxy(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY for http://, HTTPS_PROXY for https://, NO_PROXY's hosts past both; none of
    it without HARVESTER_TRUST_ENV."""
    monkeypatch.setenv("HTTP_PROXY", "http://plain:3128")
    monkeypatch.setenv("HTTPS_PROXY", f"http://bob:{SECRET}@tunnel:3129")
    monkeypatch.setenv("NO_PROXY", "internal.example, .corp:8443,10.0.0.7")
    assert ProxyRouter.from_settings(make_settings()) is None
    s = make_settings(trust_env=True)
    assert SECRET not in repr(s)
    router = ProxyRouter.from_settings(s)
    assert router is not None
    assert router.endpoints == {("plain", 3128), ("tunnel", 3129)}

    def proxy(url: str) -> str | None:
        route = router.route(URL(url))
        return None if route is None else str(route.proxy)

    assert proxy("http://api.example.com/") == "http://plain:3128"
    assert proxy("https://api.example.com/") == "http://tunnel:3129"
    assert proxy("https://a.internal.example/") is None
    assert proxy("https://x.corp:8443/") is None
    assert proxy("https://x.corp/") == "http://tunnel:3129"  # that entry is for port 8443 only
    assert proxy("http://10.0.0.7/") is None
    assert proxy("http://notinternal.example/") == "http://plain:3128"


@pytest.mark.parametrize(
    ("entries", "host", "port", "expected"),
    [
        (("*",), "anything", 80, True),
        (("example.com",), "example.com", 443, True),
        (("example.com",), "api.example.com", 443, True),
        ((".example.com",), "api.example.com", 443, True),
        (("example.com",), "badexample.com", 443, False),
        (("example.com:8080",), "example.com", 80, False),
        (("[::1]:8080",), "::1", 8080, True),
        (("::1",), "::1", 80, True),
        ((), "example.com", 80, False),
        (("10.0.0.0/8",), "10.20.30.40", 80, True),
        (("10.0.0.0/8",), "11.0.0.1", 80, False),
        (("10.0.0.0/8",), "ten.example", 80, False),  # a name is not resolved to match
        (("fd00::/8",), "fd12::1", 443, True),
        (("[fd00::/8]",), "fd12::1", 443, True),
        (("192.168.1.7/32", "example.com"), "192.168.1.7", 8080, True),
    ],
)
def test_no_proxy_entries_match_as_curl_reads_them(
    entries: tuple[str, ...], host: str, port: int, expected: bool
) -> None:
    """Domains match themselves and their subdomains, a port narrows an entry, * matches all,
    a CIDR range matches the IP addresses written in it."""
    assert bypasses(parse_no_proxy(",".join(entries)), host, port) is expected


def test_a_no_proxy_entry_with_a_slash_that_is_no_range_is_refused_at_start_up(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``10.0.0.0/33`` would otherwise match nothing, silently sending that range to the proxy."""
    monkeypatch.setenv("HTTP_PROXY", "http://plain:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,10.0.0.0/33")
    with pytest.raises(ConfigError, match=r"NO_PROXY .*'10.0.0.0/33' is not a CIDR range"):
        make_settings(trust_env=True)


def test_the_socket_factory_lets_only_the_proxys_endpoint_through() -> None:
    """The proxy's address and port pass; the same address on another port does not."""
    factory = guarded_socket_factory(AddressPolicy(), ProxyEndpoints({("127.0.0.1", 3128)}))
    tcp = (socket.AF_INET, socket.SOCK_STREAM, 6, "")
    factory((*tcp, ("127.0.0.1", 3128))).close()
    with pytest.raises(BlockedAddressError):
        factory((*tcp, ("127.0.0.1", 6379)))


async def test_a_proxy_name_resolves_to_private_addresses_that_sockets_may_then_reach() -> None:
    """The resolver passes the proxy's name whatever it resolves to and tells the socket
    factory; any other name resolving inside is still refused."""

    class Fixed:
        async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict]:
            return [{"hostname": host, "host": "10.1.2.3", "port": port, "family": 2,
                     "proto": 0, "flags": 0}]  # fmt: skip

        async def close(self) -> None:
            pass

    proxies = ProxyEndpoints({("proxy.internal", 3128)})
    policy = AddressPolicy()
    resolver = GuardedResolver(Fixed(), policy, proxies)  # type: ignore[arg-type]
    assert [r["host"] for r in await resolver.resolve("proxy.internal", 3128)] == ["10.1.2.3"]
    assert proxies.is_proxy_address("10.1.2.3", 3128)
    with pytest.raises(BlockedError):
        await resolver.resolve("proxy.internal", 80)
    with pytest.raises(BlockedError):
        await resolver.resolve("elsewhere.example", 3128)


async def test_a_proxied_target_is_refused_if_any_address_is_refused() -> None:
    """A name with one public and one private address is blocked: the proxy may pick either.
    Verdicts are kept for a while; a failed lookup is a connect failure."""
    answers = {"mixed.example": ["93.184.216.34", "10.0.0.1"], "public.example": ["93.184.216.34"]}
    lookups: list[str] = []

    async def resolve(host: str) -> list[str]:
        lookups.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    check = TargetCheck(AddressPolicy(), resolve)
    with pytest.raises(BlockedError, match=r"mixed.example resolves to .*\(10\.0\.0\.1\)"):
        await check.check("mixed.example")
    await check.check("public.example")
    await check.check("public.example")
    assert lookups == ["mixed.example", "public.example"]  # the second verdict was kept
    with pytest.raises(BlockedError):
        await check.check("127.0.0.1")  # literals are judged without a lookup
    with pytest.raises(ConnectError) as caught:
        await check.check("gone.example")
    assert not caught.value.transient


async def test_a_lookup_that_failed_for_now_is_asked_again_on_the_next_attempt() -> None:
    """A temporary DNS failure is a transient connect failure and is not kept: the retry looks
    the name up again (and passes once DNS answers), while a name that does not exist is kept."""
    failures = {"flaky.example": 1}
    lookups: list[str] = []

    async def resolve(host: str) -> list[str]:
        lookups.append(host)
        if host == "gone.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if failures.get(host, 0) > 0:
            failures[host] -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return ["93.184.216.34"]

    check = TargetCheck(AddressPolicy(), resolve)
    with pytest.raises(ConnectError) as caught:
        await check.check("flaky.example")
    assert caught.value.transient
    await check.check("flaky.example")  # looked up again, and allowed now
    for _ in range(2):
        with pytest.raises(ConnectError):
            await check.check("gone.example")
    assert lookups == ["flaky.example", "flaky.example", "gone.example"]
