"""DATABASE_URL and REDIS_URL, read before any connection: hosts and ports that can be read, TLS
files that exist, and REDIS_URL's Sentinel form.

``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?options]``
names the sentinels to ask (port 26379 unless given; IPv6 as ``[::1]:26379``), the service
they watch (the name in their ``sentinel monitor`` line) and the database number. The user and
password are the primary's; ``sentinel_username`` and ``sentinel_password`` in the query are for
sentinels that require a password of their own. redis-py has no URL for this form, so the
settings check it here at start-up and `worker.queue.connection` builds its pool from the result;
the other forms (``redis://``, ``rediss://``, ``unix://``) are redis-py's own.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

SENTINEL_SCHEME: Final = "redis+sentinel://"
SENTINEL_PORT: Final = 26379
_OPTIONS: Final = ("sentinel_username", "sentinel_password")
_URL_PARTS: Final = re.compile(r"[/?#]")
_HOST_PORT: Final = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::([^:]*))?")
# URL parameters that name a file for TLS: a missing one would otherwise surface at connect
# time as "No such file or directory", read as an outage (or, with sslmode=prefer, be ignored).
PG_TLS_FILES: Final = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
REDIS_TLS_FILES: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")


@dataclass(frozen=True, repr=False)
class SentinelURL:
    """What a ``redis+sentinel://`` URL says (its passwords kept out of ``repr``)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:
        return f"SentinelURL(sentinels={self.sentinels!r}, service={self.service!r}, db={self.db})"


def check_database_url(value: str) -> str:
    """DATABASE_URL as given, or ValueError saying what is wrong with it."""
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("must start with postgresql:// or postgres://")
    check_hosts(value, several=True)  # libpq allows host1:5432,host2:5432
    check_tls_files(value, PG_TLS_FILES)
    return value


def check_redis_url(value: str) -> str:
    """REDIS_URL as given (a server, a socket or Sentinel's form), or ValueError saying what is
    wrong with it."""
    if is_sentinel(value):
        parse_sentinel_url(value)
        return value
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
    if not value.startswith("unix://"):
        check_hosts(value, several=False)
        db = urlsplit(value).path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"the database number {db!r} is not a number")
    check_tls_files(value, REDIS_TLS_FILES)
    return value


def check_hosts(url: str, *, several: bool) -> None:
    """Refuse a URL whose host:port part cannot be read (``host:notaport``, port 99999);
    ``several``: a comma-separated list of them, as libpq allows."""
    netloc = _URL_PARTS.split(url.split("://", 1)[1], maxsplit=1)[0]
    hosts = netloc.rsplit("@", 1)[-1]
    for entry in hosts.split(",") if several else [hosts]:
        match = _HOST_PORT.fullmatch(entry)
        if match is None:
            raise ValueError(f"cannot read the host and port {entry!r}")
        _check_port(match.group(2))


def _check_port(port: str | None) -> None:
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port {port!r} is not a number from 1 to 65535")


def check_tls_files(url: str, parameters: tuple[str, ...]) -> None:
    """Refuse a URL whose TLS file ``parameters`` name a file that does not exist."""
    for name, value in parse_qsl(urlsplit(url).query):
        if name in parameters and value != "system" and not os.path.exists(value):
            raise ValueError(f"the TLS file {value!r} ({name}) does not exist")


def is_sentinel(url: str) -> bool:
    """Whether ``url`` is REDIS_URL's Sentinel form."""
    return url.startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Read a ``redis+sentinel://`` URL; `ValueError` with one sentence saying what is wrong."""
    rest = url[len(SENTINEL_SCHEME) :]
    netloc = _URL_PARTS.split(rest, maxsplit=1)[0]
    parts = urlsplit("x://h" + rest[len(netloc) :])
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    service, db = _path(parts.path)
    options = _options(parts.query)
    return SentinelURL(
        sentinels=tuple(_address(entry) for entry in hosts.split(",")),
        service=service,
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        **options,
    )


def _address(entry: str) -> tuple[str, int]:
    match = _HOST_PORT.fullmatch(entry)
    if match is None or not match.group(1).strip("[]"):
        raise ValueError(f"cannot read the sentinel address {entry!r} (host:port)")
    port = match.group(2)
    _check_port(port)
    return match.group(1).strip("[]"), SENTINEL_PORT if port is None else int(port)


def _path(path: str) -> tuple[str, int]:
    """The service name and database number of ``/service[/db]``."""
    segments = path.strip("/").split("/") if path.strip("/") else []
    if not segments or len(segments) > 2:
        raise ValueError(
            "a Sentinel URL names the service after the hosts: "
            "redis+sentinel://host:26379,host2:26379/service/db"
        )
    db = segments[1] if len(segments) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"the database number {db!r} is not a number")
    return unquote(segments[0]), int(db)


def _options(query: str) -> dict[str, str]:
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(
            f"a Sentinel URL takes no option {unknown[0]!r} (only {' and '.join(_OPTIONS)})"
        )
    return {k: v for k, v in options.items() if v}
