"""Typed configuration, read once from the environment and refused early when invalid.

Nothing else in harvester reads ``os.environ``: every knob is a field here, named
``HARVESTER_<FIELD>`` except the two conventional URLs ``DATABASE_URL`` and ``REDIS_URL``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.backoff import Backoff
from worker.errors import ConfigError
from worker.proxyurl import (
    NoProxyEntry,
    Proxies,
    ProxySpec,
    check_env_name,
    check_proxy_url,
    resolve_proxies,
)
from worker.serverurl import check_database_url, check_redis_url

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A bearer token is the API's only credential: short ones can be guessed over the network.
MIN_API_TOKEN_LENGTH = 16

# Worker processes one ``harvester worker`` runs under its parent (each is bound by one core).
MAX_PROCESSES: Final = 64

# Requests per second to a host (HARVESTER_HOST_RPS, a host's policy): 0 (not paced), or from
# MIN_HOST_RPS (one request in about 17 minutes; a slower rate's gap overflows the limiter's
# Redis arithmetic) to MAX_HOST_RPS.
MIN_HOST_RPS: Final = 0.001
MAX_HOST_RPS: Final = 100_000.0

DEFAULT_USER_AGENT = "harvester/0.1 (+https://github.com/harvester/harvester)"


def _networks(value: object) -> object:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return tuple(ipaddress.ip_network(p, strict=False) for p in parts)
        except ValueError as exc:
            raise ValueError(f"not a comma-separated list of CIDRs: {exc}") from exc
    return value


def _host_rps(value: float) -> float:
    if 0 < value < MIN_HOST_RPS:
        raise ValueError(f"must be 0 (not paced) or at least {MIN_HOST_RPS:g}")
    return value


def _secret(value: SecretStr | None) -> SecretStr | None:
    """An API token or webhook secret: long enough, without stray whitespace. Messages never
    quote the value."""
    if value is None:
        return None
    secret = value.get_secret_value()
    if secret != secret.strip():
        raise ValueError("has leading or trailing whitespace")
    if len(secret) < MIN_API_TOKEN_LENGTH:
        raise ValueError(f"must be at least {MIN_API_TOKEN_LENGTH} characters")
    return value


def _api_token(value: SecretStr | None) -> SecretStr | None:
    if value is not None and not value.get_secret_value():
        raise ValueError(
            "is empty; unset it for a loopback-only API without a token, or set at least "
            f"{MIN_API_TOKEN_LENGTH} characters"
        )
    return _secret(value)


def _webhook_secret(value: SecretStr | None) -> SecretStr | None:
    if value is None or not value.get_secret_value():
        return None  # unset or empty: no secret (jobs with notify_url are refused)
    return _secret(value)


def _ca_file(value: Path | None) -> Path | None:
    if value is not None:
        try:
            ssl.create_default_context().load_verify_locations(cafile=value)
        except (OSError, ssl.SSLError) as exc:
            problem = f"cannot read CA certificates from {str(value)!r}: {exc}"
            raise ValueError(problem) from None
    return value


def _credentials(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"{str(value)!r} is not a file")
    return value


def _unset_when_empty(value: object) -> object:
    return None if value == "" else value


ApiToken = Annotated[SecretStr | None, AfterValidator(_api_token)]
CredentialsFile = Annotated[
    Path | None, BeforeValidator(_unset_when_empty), AfterValidator(_credentials)
]
WebhookSecret = Annotated[SecretStr | None, AfterValidator(_webhook_secret)]


class Settings(BaseSettings):
    """Every setting harvester reads. Defaults are for production; see the README table."""

    model_config = SettingsConfigDict(
        env_prefix="HARVESTER_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        validate_default=True,
    )

    # -- connections ---------------------------------------------------------------------------
    redis_retry_time: float = Field(default=30.0, ge=0, le=3600)
    redis_socket_timeout: float = Field(default=10.0, gt=0, le=600)
    database_url: Annotated[str, AfterValidator(check_database_url)] = Field(
        default="postgresql://postgres@127.0.0.1:5432/harvester",
        validation_alias=AliasChoices("DATABASE_URL", "HARVESTER_DATABASE_URL"),
    )
    redis_url: Annotated[str, AfterValidator(check_redis_url)] = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "HARVESTER_REDIS_URL"),
    )
    queue: str = Field(default="arq:queue", min_length=1)

    # -- fetching ------------------------------------------------------------------------------
    concurrency: int = Field(default=64, ge=1, le=4096)
    per_host: int = Field(default=64, ge=1, le=4096)
    request_timeout: float = Field(default=30.0, gt=0, le=3600)
    connect_timeout: float = Field(default=10.0, gt=0, le=600)
    read_timeout: float = Field(default=15.0, gt=0, le=3600)
    max_attempts: int = Field(default=4, ge=1, le=20)
    retry_max_time: float = Field(default=60.0, gt=0, le=3600)
    retry_base_delay: float = Field(default=0.5, ge=0, le=60)
    retry_max_delay: float = Field(default=20.0, ge=0, le=600)
    retry_after_cap: float = Field(default=60.0, ge=0, le=3600)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=1024**3)
    max_redirects: int = Field(default=5, ge=0, le=30)
    user_agent: str = Field(default=DEFAULT_USER_AGENT, min_length=1, max_length=512)
    # Requests per second to any one host, for all jobs of a process; 0 means no pacing.
    host_rps: Annotated[float, AfterValidator(_host_rps)] = Field(
        default=0.0, ge=0, le=MAX_HOST_RPS
    )
    allowed_networks: Annotated[tuple[Network, ...], NoDecode, BeforeValidator(_networks)] = ()
    # IPv6 literals with a zone id ([fe80::1%25eth0]) name an interface, not just an address.
    allow_ipv6_zone_ids: bool = False
    # A forward proxy for every request (its password by reference only), or the conventional
    # HTTP_PROXY / HTTPS_PROXY / NO_PROXY when trust_env is set; never both.
    proxy_url: Annotated[str | None, AfterValidator(check_proxy_url)] = None
    proxy_password_env: Annotated[str | None, AfterValidator(check_env_name)] = None
    trust_env: bool = False
    http_proxy: SecretStr | None = Field(default=None, validation_alias="HTTP_PROXY")
    https_proxy: SecretStr | None = Field(default=None, validation_alias="HTTPS_PROXY")
    no_proxy: str | None = Field(default=None, validation_alias="NO_PROXY")
    # CA certificates (PEM) to trust besides the system's: a TLS-inspecting proxy, an internal CA.
    ca_file: Annotated[Path | None, AfterValidator(_ca_file)] = None
    # The TOML file of credential profiles jobs name with `auth` (worker.engine.credentials).
    credentials: CredentialsFile = None

    # -- batches and jobs ----------------------------------------------------------------------
    max_batch_urls: int = Field(default=10_000, ge=1, le=1_000_000)
    # The largest job a worker reads from Redis (its JSON, URLs included).
    max_job_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=1024**3)
    max_url_length: int = Field(default=8192, ge=64, le=1_000_000)
    # The highest `paginate.max_pages` a job may ask for.
    max_pages: int = Field(default=1000, ge=1, le=1_000_000)
    job_timeout: float = Field(default=120.0, ge=5, le=86_400)
    max_jobs: int = Field(default=4, ge=1, le=1000)
    job_tries: int = Field(default=20, ge=1, le=1000)
    job_retry_delay: float = Field(default=2.0, ge=0, le=3600)
    job_retry_max_delay: float = Field(default=300.0, ge=0, le=86_400)
    shutdown_grace: float = Field(default=20.0, ge=0, le=3600)
    poll_delay: float = Field(default=0.05, gt=0, le=60)
    keep_result: float = Field(default=86_400.0, ge=0)

    # -- loading -------------------------------------------------------------------------------
    db_pool_min: int = Field(default=1, ge=0, le=1000)
    db_pool_max: int = Field(default=4, ge=1, le=1000)
    db_command_timeout: float = Field(default=60.0, gt=0, le=3600)
    # DATABASE_URL is a pgbouncer in transaction mode: no session state (worker.engine.store).
    pgbouncer: bool = False
    copy_chunk_rows: int = Field(default=1000, ge=1, le=100_000)
    copy_chunk_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024**3)
    buffer_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024, le=64 * 1024**3)
    writers: int = Field(default=1, ge=1, le=64)
    write_queue_size: int = Field(default=512, ge=1, le=1_000_000)

    # -- scheduled sources, replay, retention ---------------------------------------------------
    sources_poll_seconds: int = Field(default=60, ge=1, le=3600)
    sources_batch_size: int = Field(default=500, ge=1, le=100_000)
    sources_claim_limit: int = Field(default=10_000, ge=1, le=1_000_000)
    sources_store_unchanged: bool = False
    sources_max_delay: float = Field(default=86_400.0, ge=1, le=30 * 86_400)
    replay_after: float = Field(default=0.0, ge=0, le=30 * 86_400)  # 0: the replay cron is off
    replay_max: int = Field(default=3, ge=1, le=100)
    retention_days: float | None = Field(default=None, gt=0, le=100 * 365)
    retention_batch_rows: int = Field(default=5000, ge=1, le=1_000_000)

    # -- results: completion webhooks and the change stream --------------------------------------
    # Signs every webhook (worker/engine/webhooks.py); jobs with a notify_url are refused without.
    webhook_secret: WebhookSecret = None
    # The secret being rotated out: webhooks carry a signature by each while it is set.
    webhook_secret_previous: WebhookSecret = None
    # A delivery is retried (the job backoff) until it is this old, then given up as failed.
    webhook_max_age: float = Field(default=86_400.0, gt=0, le=30 * 86_400)
    # One delivery attempt's whole time; the receiver's answer is read up to a few KB.
    webhook_timeout: float = Field(default=10.0, gt=0, le=120)
    # The capped Redis stream every landed chunk is told to ("" : none), and its length (~).
    events_stream: str = "harvester:events"
    events_maxlen: int = Field(default=100_000, ge=1, le=100_000_000)

    # -- operations ------------------------------------------------------------------------------
    processes: int = Field(default=1, ge=1, le=MAX_PROCESSES)  # harvester worker --processes
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # unset: no metrics server
    metrics_host: str = "127.0.0.1"
    # Where the worker processes of a host record metrics for the one that serves them.
    metrics_dir: Path | None = None
    # Apply pending migrations when a worker or the API starts (under an advisory lock).
    migrate_on_start: bool = True
    # Seconds between heartbeats; a heartbeat lives twice that, and a dead worker's jobs are taken
    # over within about three (worker/queue/holds.py): 15 s at most with the default.
    health_check_interval: int = Field(default=5, ge=1, le=3600)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    api_token: ApiToken = None
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024**3)
    # Slow clients: the headers of each request (and the wait for the next one on a kept-alive
    # connection) and a request body get a deadline; open connections are capped.
    api_header_timeout: float = Field(default=10.0, gt=0, le=600)
    api_body_timeout: float = Field(default=30.0, gt=0, le=3600)
    api_max_connections: int = Field(default=256, ge=1, le=100_000)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    uvloop: bool = True

    # Filled from the proxy settings after validation: scheme -> proxy, and NO_PROXY's entries.
    _proxies: Proxies = PrivateAttr(default_factory=dict)
    _no_proxy: tuple[NoProxyEntry, ...] = PrivateAttr(default=())

    @property
    def metrics_shared_dir(self) -> Path:
        """HARVESTER_METRICS_DIR, or a folder per user and queue in the temporary directory."""
        if self.metrics_dir is not None:
            return self.metrics_dir
        digest = hashlib.sha1(self.queue.encode(), usedforsecurity=False).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"harvester-metrics-{os.getuid()}-{digest}"

    @property
    def proxies(self) -> Proxies:
        """The forward proxy for each URL scheme (``http``, ``https``) that has one."""
        return dict(self._proxies)

    @property
    def no_proxy_hosts(self) -> tuple[NoProxyEntry, ...]:
        """NO_PROXY's entries (with HARVESTER_TRUST_ENV): hosts reached without the proxy."""
        return self._no_proxy

    @property
    def fetch_backoff(self) -> Backoff:
        """Waits between a URL's attempts (full jitter)."""
        return Backoff(self.retry_base_delay, self.retry_max_delay, "full")

    @property
    def job_backoff(self) -> Backoff:
        """Waits before a deferred job's next try (equal jitter: never near zero)."""
        return Backoff(self.job_retry_delay, self.job_retry_max_delay, "equal")

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError(
                "HARVESTER_DB_POOL_MIN must not exceed HARVESTER_DB_POOL_MAX "
                f"({self.db_pool_min} > {self.db_pool_max})"
            )
        if self.per_host > self.concurrency:
            raise ValueError(
                "HARVESTER_PER_HOST must not exceed HARVESTER_CONCURRENCY "
                f"({self.per_host} > {self.concurrency})"
            )
        if self.retry_max_time + self.request_timeout >= self.job_timeout:
            raise ValueError(
                "HARVESTER_JOB_TIMEOUT must exceed HARVESTER_RETRY_MAX_TIME + "
                f"HARVESTER_REQUEST_TIMEOUT ({self.job_timeout} <= "
                f"{self.retry_max_time} + {self.request_timeout}), or a slow URL could never land"
            )
        needed = self.copy_chunk_bytes * (self.writers * self.max_jobs + 1)
        if self.buffer_bytes < needed:
            raise ValueError(
                "HARVESTER_BUFFER_BYTES must hold a chunk per writer of every running job and one "
                "more: at least HARVESTER_COPY_CHUNK_BYTES x (HARVESTER_WRITERS x "
                f"HARVESTER_MAX_JOBS + 1) = {needed}"
            )
        if not (
            60 % self.sources_poll_seconds == 0
            or (3600 % self.sources_poll_seconds == 0 and self.sources_poll_seconds % 60 == 0)
        ):
            raise ValueError(
                "HARVESTER_SOURCES_POLL_SECONDS must divide a minute (1, 2, 5, 10, 15, 20, 30) "
                f"or be whole minutes that divide an hour, got {self.sources_poll_seconds}"
            )
        if self.webhook_secret_previous is not None and self.webhook_secret is None:
            raise ValueError(
                "HARVESTER_WEBHOOK_SECRET_PREVIOUS is set without HARVESTER_WEBHOOK_SECRET"
            )
        if self.retry_base_delay > self.retry_max_delay:
            raise ValueError("HARVESTER_RETRY_BASE_DELAY must not exceed HARVESTER_RETRY_MAX_DELAY")
        self._resolve_proxies()
        return self

    def _resolve_proxies(self) -> None:
        if self.proxy_url is None and self.proxy_password_env is not None:
            raise ValueError("HARVESTER_PROXY_PASSWORD_ENV is set without HARVESTER_PROXY_URL")
        self._proxies, self._no_proxy = resolve_proxies(
            self.proxy_url,
            self._proxy_password,
            trust_env=self.trust_env,
            http_proxy=self.http_proxy,
            https_proxy=self.https_proxy,
            no_proxy=self.no_proxy,
        )

    def _proxy_password(self, spec: ProxySpec) -> SecretStr | None:
        name = self.proxy_password_env
        if name is None:
            return None
        if spec.user is None:
            raise ValueError(
                "HARVESTER_PROXY_URL needs a user name (http://user@host:port) to go with the "
                f"password in {name} (HARVESTER_PROXY_PASSWORD_ENV)"
            )
        password = os.environ.get(name)
        if not password:
            raise ValueError(
                f"HARVESTER_PROXY_PASSWORD_ENV names {name}, which is not set or is empty"
            )
        return SecretStr(password)


# Settings read under their conventional names, without the HARVESTER_ prefix.
_CONVENTIONAL: Final = frozenset(
    {"DATABASE_URL", "REDIS_URL", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"}
)


def _variable_name(loc: tuple[int | str, ...]) -> str:
    name = (str(loc[0]) if loc else "?").upper().removeprefix("HARVESTER_")
    return name if name in _CONVENTIONAL else f"HARVESTER_{name}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus explicit overrides) into a `Settings`, or raise `ConfigError`.

    The error message names each offending environment variable, so an operator can fix the
    deployment without reading a traceback.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # pydantic prefixes our own messages with "Value error, ": drop it.
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_variable_name(err['loc'])}: {message}" if err["loc"] else message)
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
