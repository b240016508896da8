"""Settings: defaults, environment names, and refusals that name the variable."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.settings import Settings, load_settings


def test_defaults_are_production_sane(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults bound everything and are not the tutorial's cpu_count*2."""
    for var in ("DATABASE_URL", "REDIS_URL", "HARVESTER_CONCURRENCY", "HARVESTER_MAX_ATTEMPTS"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.queue == "arq:queue"
    assert s.concurrency == 64
    assert s.max_attempts >= 3
    assert s.max_body_bytes == 10 * 1024 * 1024
    assert s.allowed_networks == ()


def test_reads_conventional_urls_and_prefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """DATABASE_URL and REDIS_URL keep their names; everything else is HARVESTER_*."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/h")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/3")
    monkeypatch.setenv("HARVESTER_CONCURRENCY", "8")
    monkeypatch.setenv("HARVESTER_PER_HOST", "4")
    monkeypatch.setenv("HARVESTER_QUEUE", "jobs")
    monkeypatch.setenv("HARVESTER_ALLOWED_NETWORKS", "10.0.0.0/8, 127.0.0.1/32")
    s = load_settings()
    assert s.database_url == "postgresql://u@db:5432/h"
    assert s.redis_url == "redis://cache:6379/3"
    assert (s.concurrency, s.per_host, s.queue) == (8, 4, "jobs")
    assert s.allowed_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    )


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("HARVESTER_CONCURRENCY", "0", "HARVESTER_CONCURRENCY"),
        ("HARVESTER_CONCURRENCY", "lots", "HARVESTER_CONCURRENCY"),
        ("HARVESTER_MAX_BODY_BYTES", "-5", "HARVESTER_MAX_BODY_BYTES"),
        ("HARVESTER_REQUEST_TIMEOUT", "0", "HARVESTER_REQUEST_TIMEOUT"),
        ("HARVESTER_ALLOWED_NETWORKS", "10.0.0.0/33", "HARVESTER_ALLOWED_NETWORKS"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
        ("REDIS_URL", "http://x", "REDIS_URL"),
        ("HARVESTER_PER_HOST", "1000", "HARVESTER_PER_HOST"),
        ("DATABASE_URL", "postgresql://u@db:notaport/h", "DATABASE_URL: the port 'notaport'"),
        ("DATABASE_URL", "postgresql://u@:notaport", "DATABASE_URL: the port 'notaport'"),
        ("DATABASE_URL", "postgresql://u@db:99999/h", "DATABASE_URL: the port '99999'"),
        ("DATABASE_URL", "postgresql://a:5432,b:x/h", "DATABASE_URL: the port 'x'"),
        ("REDIS_URL", "redis://cache:port/0", "REDIS_URL: the port 'port'"),
        ("REDIS_URL", "redis://cache:6379/zero", "REDIS_URL: the database number 'zero'"),
        ("HARVESTER_HOST_RPS", "1e-15", "HARVESTER_HOST_RPS: .*at least 0.001"),
    ],
)
def test_invalid_values_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str
) -> None:
    """A bad value raises ConfigError whose message names the variable."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_pool_min_above_max_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relations between settings are checked too."""
    monkeypatch.setenv("HARVESTER_DB_POOL_MIN", "9")
    monkeypatch.setenv("HARVESTER_DB_POOL_MAX", "2")
    with pytest.raises(ConfigError, match="HARVESTER_DB_POOL_MIN"):
        load_settings()


def test_urls_with_several_hosts_ipv6_and_sockets_are_accepted() -> None:
    """The DSN forms libpq and redis-py take pass validation."""
    for url in (
        "postgresql://u:p@db1:5432,db2:5433/h?sslmode=verify-full",
        "postgresql://u@[2001:db8::1]:5432/h",
        "postgresql:///h?host=/run/postgresql",
    ):
        assert load_settings(database_url=url).database_url == url
    for url in (
        "redis://:pw@[::1]:6380/2",
        "rediss://cache/1?ssl_cert_reqs=none",
        "unix:///s?db=3",
    ):
        assert load_settings(redis_url=url).redis_url == url


def test_configuration_errors_read_as_one_clean_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    """No "configuration: Value error," noise: the variable, then what is wrong with it."""
    monkeypatch.setenv("HARVESTER_DB_POOL_MIN", "9")
    monkeypatch.setenv("HARVESTER_DB_POOL_MAX", "2")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("invalid configuration: HARVESTER_DB_POOL_MIN must not")
    assert "Value error" not in str(caught.value)


def test_the_configuration_page_lists_every_setting_once(repo_root: Path) -> None:
    """docs/configuration.md has one row per setting, by the variable's name, and no other."""
    text = (repo_root / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = text.split("<!-- configuration table:", 1)[1]
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|", table, re.M)
    names = {f: f"HARVESTER_{f.upper()}" for f in Settings.model_fields}
    names.update(database_url="DATABASE_URL", redis_url="REDIS_URL")
    names.update(http_proxy="HTTP_PROXY", https_proxy="HTTPS_PROXY", no_proxy="NO_PROXY")
    assert sorted(rows) == sorted(names.values())


@pytest.mark.parametrize(
    ("field", "variable", "url"),
    [
        ("database_url", "DATABASE_URL", "postgresql://u@db/h?sslmode=verify-full&sslrootcert={f}"),
        ("database_url", "DATABASE_URL", "postgresql://u@db/h?sslcert={f}&sslkey={f}"),
        ("redis_url", "REDIS_URL", "rediss://cache:6380/0?ssl_ca_certs={f}"),
        ("redis_url", "REDIS_URL", "rediss://cache:6380/0?ssl_certfile={f}"),
    ],
)
def test_a_tls_file_that_does_not_exist_is_refused(
    tmp_path: Path, field: str, variable: str, url: str
) -> None:
    """A CA, certificate or key file named in a URL must exist: the error names the variable,
    the parameter and the file (a TLS failure at connect time would look like an outage)."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as caught:
        load_settings(**{field: url.format(f=missing)})
    message = str(caught.value)
    assert message.startswith(f"invalid configuration: {variable}: the TLS file '{missing}'")
    assert "does not exist" in message


def test_tls_files_that_exist_are_accepted(tmp_path: Path) -> None:
    """The same URLs load when the files are there (and libpq's sslrootcert=system is kept)."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    pg = f"postgresql://u@db/h?sslmode=verify-full&sslrootcert={ca}"
    assert load_settings(database_url=pg).database_url == pg
    system = "postgresql://u@db/h?sslmode=verify-full&sslrootcert=system"
    assert load_settings(database_url=system).database_url == system
    rd = f"rediss://cache:6380/0?ssl_ca_certs={ca}"
    assert load_settings(redis_url=rd).redis_url == rd
