"""REDIS_URL's Sentinel form: what it is read as, and how a bad one is refused."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.serverurl import SentinelURL, parse_sentinel_url
from worker.settings import load_settings


@pytest.mark.parametrize(
    ("url", "read"),
    [
        (
            "redis+sentinel://s1:26380,s2,[::1]:26381/mymaster/3",
            SentinelURL((("s1", 26380), ("s2", 26379), ("::1", 26381)), "mymaster", 3),
        ),
        ("redis+sentinel://s1/mymaster", SentinelURL((("s1", 26379),), "mymaster", 0)),
        ("redis+sentinel://s1/mymaster/", SentinelURL((("s1", 26379),), "mymaster", 0)),
        (
            "redis+sentinel://app:p%40ss@s1:1/svc/2?sentinel_password=sp&sentinel_username=su",
            SentinelURL((("s1", 1),), "svc", 2, "app", "p@ss", "su", "sp"),
        ),
        (
            "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/svc/0",
            SentinelURL((("10.0.0.1", 26379), ("10.0.0.2", 26379)), "svc", 0, None, "pw"),
        ),
    ],
)
def test_a_sentinel_url_is_read_into_hosts_service_db_and_credentials(
    url: str, read: SentinelURL
) -> None:
    """Hosts (default port 26379, IPv6 in brackets), service, database and both passwords."""
    assert parse_sentinel_url(url) == read
    assert load_settings(redis_url=url).redis_url == url


def test_a_sentinel_url_keeps_its_passwords_out_of_repr() -> None:
    """Neither password shows in the value's repr (it may reach a log line)."""
    shown = repr(parse_sentinel_url("redis+sentinel://:secret1@s/m/0?sentinel_password=secret2"))
    assert "secret1" not in shown
    assert "secret2" not in shown


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1:26379", "a Sentinel URL names the service after the hosts"),
        ("redis+sentinel://s1:26379/", "a Sentinel URL names the service after the hosts"),
        ("redis+sentinel://s1/m/0/extra", "a Sentinel URL names the service after the hosts"),
        ("redis+sentinel://s1:26379/m/zero", "the database number 'zero' is not a number"),
        ("redis+sentinel://s1:port/m/0", "the port 'port' is not a number from 1 to 65535"),
        ("redis+sentinel://s1:99999/m/0", "the port '99999' is not a number from 1 to 65535"),
        ("redis+sentinel://s1,,s2/m/0", "cannot read the sentinel address ''"),
        ("redis+sentinel:///m/0", "cannot read the sentinel address ''"),
        ("redis+sentinel://::1/m/0", "cannot read the sentinel address '::1'"),
        ("redis+sentinel://s1/m/0?db=2", "a Sentinel URL takes no option 'db'"),
    ],
)
def test_a_bad_sentinel_url_is_refused_in_one_sentence_naming_redis_url(
    url: str, says: str
) -> None:
    """A Sentinel URL that cannot be read is a ConfigError naming REDIS_URL and the problem."""
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url=url)
    message = str(caught.value)
    assert message.startswith(f"invalid configuration: REDIS_URL: {says}"), message
    assert "\n" not in message


def test_an_unknown_scheme_lists_the_sentinel_form() -> None:
    """The refusal of an unknown scheme names every form REDIS_URL takes."""
    with pytest.raises(ConfigError, match=r"REDIS_URL: must start with .*redis\+sentinel://"):
        load_settings(redis_url="sentinel://s1/m/0")
