"""The forward proxy settings, read before any request: HARVESTER_PROXY_URL (or HTTP_PROXY and
HTTPS_PROXY) as a `ProxySpec`, and NO_PROXY's entries. `worker.engine.proxy` routes by them."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ProxySpec:
    """A forward proxy: its ``http://host:port`` and, apart, the credentials it wants (the
    password never shows in a repr)."""

    url: str
    user: str | None = None
    password: SecretStr | None = field(default=None, repr=False)


def parse_proxy_url(value: str, *, inline_password: bool) -> ProxySpec:
    """``http://[user[:password]@]host:port`` as a `ProxySpec`, or ValueError saying what is
    wrong (never quoting the value: it may hold a password)."""
    parts = urlsplit(value.strip())
    if parts.scheme != "http":
        raise ValueError("must start with http:// (https:// targets go through it by CONNECT)")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError("cannot read the host and port (http://host:port)") from exc
    if not host or port is None:
        raise ValueError("needs a host and a port (http://host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be http://host:port, without a path, query or fragment")
    if parts.password is not None and not inline_password:
        raise ValueError(
            "must not hold a password: put it in an environment variable of its own and name "
            "that variable in HARVESTER_PROXY_PASSWORD_ENV"
        )
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = unquote(parts.username) if parts.username else None
    password = SecretStr(unquote(parts.password)) if parts.password else None
    return ProxySpec(f"http://{netloc}", user, password)


NoProxyEntry = str | ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_no_proxy(value: str | None) -> tuple[NoProxyEntry, ...]:
    """NO_PROXY's entries (commas or spaces between them): names lower case, CIDR ranges as
    networks; ValueError naming an entry with a ``/`` that is no range (it would match nothing,
    silently)."""
    words = (value or "").replace(" ", ",").split(",")
    return tuple(_entry(w.strip().lower()) for w in words if w.strip())


def _entry(word: str) -> NoProxyEntry:
    if "/" not in word:
        return word
    try:
        return ipaddress.ip_network(word.strip("[]"), strict=False)
    except ValueError:
        raise ValueError(f"{word!r} is not a CIDR range (e.g. 10.0.0.0/8)") from None


def check_proxy_url(value: str | None) -> str | None:
    """HARVESTER_PROXY_URL as given, or ValueError (it must hold no password)."""
    if value is not None:
        parse_proxy_url(value, inline_password=False)
    return value


def check_env_name(value: str | None) -> str | None:
    """HARVESTER_PROXY_PASSWORD_ENV as given: the name of a variable, never the password."""
    if value is not None and not _ENV_NAME.fullmatch(value):
        raise ValueError("must be the name of an environment variable, not a value")
    return value


Proxies = dict[str, ProxySpec]


def resolve_proxies(
    proxy_url: str | None,
    password_for: Callable[[ProxySpec], SecretStr | None],
    *,
    trust_env: bool,
    http_proxy: SecretStr | None,
    https_proxy: SecretStr | None,
    no_proxy: str | None,
) -> tuple[Proxies, tuple[NoProxyEntry, ...]]:
    """The proxy of each URL scheme that has one, and NO_PROXY's entries: HARVESTER_PROXY_URL
    for both schemes (its password from ``password_for``), or with ``trust_env`` the
    conventional variables; ValueError naming the variable that is wrong."""
    if proxy_url is not None and trust_env:
        raise ValueError("set HARVESTER_PROXY_URL or HARVESTER_TRUST_ENV=true, not both")
    proxies: Proxies = {}
    if proxy_url is not None:
        spec = parse_proxy_url(proxy_url, inline_password=False)
        spec = ProxySpec(spec.url, spec.user, password_for(spec))
        proxies = {"http": spec, "https": spec}
    if not trust_env:
        return proxies, ()
    for scheme, value in (("http", http_proxy), ("https", https_proxy)):
        if value is not None and value.get_secret_value().strip():
            try:
                proxies[scheme] = parse_proxy_url(value.get_secret_value(), inline_password=True)
            except ValueError as exc:
                raise ValueError(f"{scheme.upper()}_PROXY (HARVESTER_TRUST_ENV): {exc}") from None
    try:
        return proxies, parse_no_proxy(no_proxy)
    except ValueError as exc:
        raise ValueError(f"NO_PROXY (HARVESTER_TRUST_ENV): {exc}") from None
