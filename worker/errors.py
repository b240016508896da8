"""harvester's one error hierarchy. Library exceptions are translated into it at one boundary
each (aiohttp in `worker.engine.session`, asyncpg in `worker.engine.store`, redis-py in
`worker.queue.connection.redis_error`), always with ``raise ... from exc``.

    HarvesterError
    ├── ConfigError            invalid settings, or a URL its server refuses (no such Redis
    │                          database, wrong credentials); the process refuses to start
    ├── UsageError             a command's input cannot be used: a file that cannot be read
    ├── BadJobError            a malformed job payload; the job fails at once, never retried
    ├── StoreError             Postgres could not take a read or write; the job is retried later
    │   └── SchemaError            the database lacks harvester's tables: run harvester migrate
    ├── RedisUnavailableError  Redis could not be reached within the retry budget
    ├── LeaseLostError         a run of a job lost its lease (another worker took the job
    │                          over); it writes nothing more and stops
    ├── ListenError            a server (`harvester api`) cannot listen: port in use, bad address
    └── FetchError             one URL could not be landed; becomes a `fetch_failures` row
        ├── InvalidURLError        kind "invalid_url"    not an absolute http(s) URL
        ├── BlockedError           kind "blocked"        address not allowed (SSRF guard)
        ├── RedirectError          kind "redirect"       loop, too many hops, or a non-http target
        ├── HTTPStatusError        kind "http_status"    non-2xx (transient: 408, 429, 5xx)
        ├── TimeoutError_          kind "timeout"        connect or read timed out (transient)
        ├── ConnectError           kind "connect"        refused, reset, DNS failure (transient)
        ├── ProxyError             kind "proxy"          the forward proxy refused or failed
        ├── ProtocolError          kind "protocol"       truncated body, bad framing (transient)
        ├── TooLargeError          kind "too_large"      body over HARVESTER_MAX_BODY_BYTES
        ├── ContentTypeError       kind "content_type"   declared content type is not JSON
        ├── InvalidJSONError       kind "invalid_json"   body is not JSON Postgres can store
        ├── AuthError              kind "auth"           an OAuth2 token endpoint gave no token
        │                                                (transient when it timed out or 5xx)
        └── PaginationError        kind "pagination"     a page's next page cannot be followed
            └── PaginationLoopError    kind "pagination_loop"  a next page fetched already

A `FetchError` knows whether it is ``transient`` (worth another attempt) and may carry the
HTTP ``status`` and a server's ``retry_after`` in seconds. What "transient" means is defined
once, below the tree: the statuses worth another request, and the failure kinds a later replay
may clear.
"""

from __future__ import annotations

from typing import Final

# HTTP statuses that say "try again": timeouts, too early, too many requests, and the 5xx that
# mean a server or gateway is overloaded or briefly down. Other 5xx (501 Not Implemented, 505)
# are answers that will not change.
TRANSIENT_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
# Failure kinds a later try may clear: the network, the upstream's state, our own time limits.
# (The fetcher retries only the transient cases of connect and protocol at once: a TLS error or
# a name that does not exist is final for the job, but a replay later may find it fixed.)
TRANSIENT_KINDS: Final = ("timeout", "connect", "protocol", "proxy", "deadline", "abandoned")


def is_transient_failure(kind: str, status: int | None) -> bool:
    """Whether a recorded failure is worth replaying later (the replay cron's rule)."""
    return kind in TRANSIENT_KINDS or (kind == "http_status" and status in TRANSIENT_STATUSES)


class HarvesterError(Exception):
    """Base of every error harvester raises on purpose."""


class ConfigError(HarvesterError):
    """The configuration is invalid; the message names the variable."""


class BadJobError(HarvesterError):
    """A job payload that cannot be run as given; the message says what was wrong."""


class LeaseLostError(HarvesterError):
    """This run of a job no longer holds the job's lease: another worker took the job over (this
    one looked dead). Nothing of the transaction that found out was committed."""


class StoreError(HarvesterError):
    """Postgres did not take a read or write.

    ``transient`` (the default) means the connection or server failed and the same statement may
    succeed later; otherwise Postgres refused it (schema, permissions, data) and retrying the same
    chunk right away is pointless.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class SchemaError(StoreError):
    """The database lacks harvester's tables, columns or functions: it needs
    ``harvester migrate``. Retrying the statement is pointless, so never transient."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class UsageError(HarvesterError):
    """A command's arguments or input cannot be used (a file that cannot be read)."""


class RedisUnavailableError(HarvesterError):
    """Redis could not be reached (a worker: for longer than HARVESTER_REDIS_RETRY_TIME)."""


class ListenError(HarvesterError):
    """A server cannot listen on its address; the message names the setting to change."""


class FetchError(HarvesterError):
    """A URL could not be landed as a document."""

    kind: str = "error"
    transient: bool = False

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        if transient is not None:
            self.transient = transient


class InvalidURLError(FetchError):
    kind = "invalid_url"


class BlockedError(FetchError):
    kind = "blocked"


class RedirectError(FetchError):
    kind = "redirect"


class HTTPStatusError(FetchError):
    kind = "http_status"


class TimeoutError_(FetchError):  # the builtin name is taken
    kind = "timeout"
    transient = True


class ConnectError(FetchError):
    kind = "connect"
    transient = True


class ProxyError(FetchError):
    """The forward proxy refused the request (407: its credentials) or could not reach the
    target (a 5xx to CONNECT), or could not be reached itself."""

    kind = "proxy"


class ProtocolError(FetchError):
    kind = "protocol"
    transient = True


class TooLargeError(FetchError):
    kind = "too_large"


class ContentTypeError(FetchError):
    kind = "content_type"


class InvalidJSONError(FetchError):
    kind = "invalid_json"


class AuthError(FetchError):
    kind = "auth"


class PaginationError(FetchError):
    """A page's next page cannot be followed; ``target`` is its URL when one was read."""

    kind = "pagination"

    def __init__(self, detail: str, *, target: str | None = None) -> None:
        super().__init__(detail)
        self.target = target


class PaginationLoopError(PaginationError):
    kind = "pagination_loop"
