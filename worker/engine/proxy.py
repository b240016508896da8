"""Forward proxies: which request goes through which proxy, with which credentials.

Built once per process from the settings (`ProxyRouter.from_settings`), or not at all: without a
proxy there is no router and a request pays nothing for this module. HARVESTER_PROXY_URL sends
every request through one proxy; HARVESTER_TRUST_ENV=true honours HTTP_PROXY, HTTPS_PROXY and
NO_PROXY as read by `worker.settings` (aiohttp's own ``trust_env`` is never used: settings are
the only reader of the environment). The SSRF guard's part is in `worker.engine.guard`
(`ProxyEndpoints`, `TargetCheck`); `Egress` judges and routes every hop of a fetch, every OAuth2
token request and every webhook.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

import aiohttp
from yarl import URL

from worker.engine.guard import AddressPolicy, TargetCheck
from worker.logs import register_secret
from worker.proxyurl import NoProxyEntry, ProxySpec
from worker.settings import Settings

Headers = Mapping[str, str]


@dataclass(frozen=True)
class Route:
    """The proxy a request goes through, and the ``Proxy-Authorization`` value it wants (never
    in a repr)."""

    proxy: URL
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def from_spec(cls, spec: ProxySpec) -> Route:
        """The route to the proxy ``spec`` describes."""
        if spec.user is None:
            return cls(URL(spec.url))
        password = spec.password.get_secret_value() if spec.password is not None else ""
        authorization = aiohttp.encode_basic_auth(spec.user, password)
        for secret in (password, authorization):
            register_secret(secret)  # hidden from every log line and failure detail
        return cls(URL(spec.url), authorization)

    def headers(self, url: URL, headers: Headers | None) -> tuple[Headers | None, Headers | None]:
        """The request's headers and the CONNECT's, with the credentials where the proxy reads
        them: on the request itself for http:// (it is sent to the proxy, which drops the
        header), on the CONNECT for https:// (the request then travels inside the tunnel)."""
        if self.authorization is None:
            return headers, None
        credentials = {"Proxy-Authorization": self.authorization}
        if url.scheme == "https":
            return headers, credentials
        return {**(headers or {}), **credentials}, None


def bypasses(entries: tuple[NoProxyEntry, ...], host: str, port: int | None) -> bool:
    """Whether NO_PROXY's ``entries`` (`parse_no_proxy`) send ``host`` (lower case, IPv6 without
    brackets) past the proxy, as curl (7.86 on) reads them: ``*`` for every host;
    ``example.com`` or ``.example.com`` for that domain and every name under it; ``host:port``
    for one port only; an IP address for itself; a CIDR range for the IP addresses in it,
    written as such in the URL (a name is not resolved to be matched)."""
    address = None  # parsed only when there is a range to look in
    for entry in entries:
        if not isinstance(entry, str):
            address = address or _address(host)
            if address is not None and address in entry:
                return True
            continue
        if entry == "*":
            return True
        name, want_port = _split_port(entry)
        if want_port is not None and want_port != port:
            continue
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _address(host: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def _split_port(entry: str) -> tuple[str, int | None]:
    head, sep, tail = entry.rpartition(":")
    if sep and tail.isdigit() and (head.endswith("]") or ":" not in head):
        return head, int(tail)
    return entry, None


class ProxyRouter:
    """Decides, per URL, whether a request goes through a proxy and which."""

    def __init__(
        self, routes: Mapping[str, Route], no_proxy: tuple[NoProxyEntry, ...] = ()
    ) -> None:
        self._routes = dict(routes)
        self._no_proxy = no_proxy

    @classmethod
    def from_settings(cls, settings: Settings) -> ProxyRouter | None:
        """The router the settings ask for, or None when no proxy is configured."""
        specs = settings.proxies
        if not specs:
            return None
        routes = {scheme: Route.from_spec(spec) for scheme, spec in specs.items()}
        return cls(routes, settings.no_proxy_hosts)

    @property
    def endpoints(self) -> frozenset[tuple[str, int]]:
        """Every proxy's (host, port), for the guard to let the connector reach."""
        return frozenset((r.proxy.host or "", r.proxy.port or 80) for r in self._routes.values())

    def route(self, url: URL) -> Route | None:
        """The proxy for ``url``, or None to connect directly."""
        route = self._routes.get(url.scheme)
        if route is None or not self._no_proxy:
            return route
        host = (url.raw_host or "").lower()
        return None if bypasses(self._no_proxy, host, url.port) else route


class Egress:
    """The way out for a process's requests when a proxy is configured: the proxy (or none)
    each target is routed to, once the SSRF guard has judged the target, which the connector
    never sees behind a proxy. Fetches, the OAuth2 token requests and webhooks all go this way."""

    def __init__(self, router: ProxyRouter, targets: TargetCheck) -> None:
        self._router = router
        self._targets = targets

    @classmethod
    def from_settings(cls, settings: Settings, policy: AddressPolicy) -> Egress | None:
        """The egress the settings ask for, or None without a proxy (requests go direct, their
        addresses judged by the connector's guard)."""
        router = ProxyRouter.from_settings(settings)
        return None if router is None else cls(router, TargetCheck(policy))

    async def way(self, url: URL, headers: Headers | None) -> Way:
        """How a request to ``url`` with ``headers`` goes out, once its target has passed the
        guard (else the guard's `FetchError`): its headers, its proxy (None: direct) and the
        CONNECT's headers, the proxy's credentials where the proxy reads them."""
        await self._targets.check(url.raw_host or "")
        route = self._router.route(url)
        if route is None:
            return headers, None, None
        sent, to_proxy = route.headers(url, headers)
        return sent, route.proxy, to_proxy


# A request's headers, the proxy it goes through (None: direct) and the CONNECT's headers.
Way = tuple[Headers | None, URL | None, Headers | None]


async def way_out(egress: Egress | None, url: URL, headers: Headers | None) -> Way:
    """`Egress.way`, or the direct way (``headers`` as they are) without an egress. The fetch
    path writes this test inline, so that a request without a proxy awaits no coroutine per
    hop."""
    return (headers, None, None) if egress is None else await egress.way(url, headers)


def proxy_endpoints(settings: Settings) -> frozenset[tuple[str, int]]:
    """The (host, port) of every proxy the settings configure (empty without one)."""
    router = ProxyRouter.from_settings(settings)
    return router.endpoints if router is not None else frozenset()
