"""Credential profiles: what the loader accepts, what it refuses and how it says so, and which
hosts a profile's secret may go to."""

from __future__ import annotations

from pathlib import Path

import pytest
from yarl import URL

from worker.engine.auth import may_send, unsigned
from worker.engine.credentials import Profile, load_credentials, profile_names
from worker.errors import ConfigError
from worker.logs import redact

ENV = {"API_TOKEN": "tok-unit-1234", "API_KEY": "key-unit-5678", "PW": "pw-unit", "CS": "cs-unit"}

GOOD = """
[profiles.crm]
type = "bearer"
hosts = ["api.example.com", "127.0.0.1:8443"]
token_env = "API_TOKEN"

[profiles.hdr]
type = "header"
hosts = ["api.example.com"]
name = "X-Api-Key"
value_env = "API_KEY"

[profiles.q]
type = "query"
hosts = ["api.example.com"]
param = "api_key"
value_env = "API_KEY"

[profiles.b]
type = "basic"
hosts = ["api.example.com"]
username = "reports"
password_env = "PW"

[profiles.o]
type = "oauth2_client_credentials"
hosts = ["api.example.com"]
token_url = "https://auth.example.com/token"
client_id = "harvester"
client_secret_env = "CS"
scope = "read"
"""


def _load(tmp_path: Path, text: str, env: dict[str, str] = ENV):  # type: ignore[no-untyped-def]
    path = tmp_path / "credentials.toml"
    path.write_text(text)
    return load_credentials(path, env)


def _refusal(tmp_path: Path, text: str, env: dict[str, str] = ENV) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, env)
    return str(info.value)


def test_every_profile_type_loads_with_its_secret_from_the_environment(tmp_path: Path) -> None:
    """Each of the five types loads; the secret is the variable's value, the key its name."""
    creds = _load(tmp_path, GOOD)
    assert {p.type for p in creds.profiles.values()} == {
        "bearer",
        "header",
        "query",
        "basic",
        "oauth2_client_credentials",
    }
    assert creds.profiles["crm"].secret == "tok-unit-1234"
    assert creds.profiles["hdr"].key == "X-Api-Key"
    assert creds.profiles["o"].key == "harvester"
    assert creds.profiles["o"].scope == "read"
    assert "tok-unit-1234" not in repr(creds.profiles["crm"])


def test_loaded_secrets_are_redacted_from_text(tmp_path: Path) -> None:
    """Once loaded, a profile's secret is hidden wherever `redact` looks."""
    _load(tmp_path, GOOD)
    assert redact("GET /x?k=1 failed with cs-unit and pw-unit") == (
        "GET /x?k=1 failed with [redacted] and [redacted]"
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('type = "bearer"\nhosts = ["a.example"]\ntoken = "abc"', ["'p'", "'token'", "token_env"]),
        (
            'type = "basic"\nhosts = ["a.example"]\nusername = "u"\npassword = "x"',
            ["'p'", "'password'", "password_env"],
        ),
        (
            'type = "header"\nhosts = ["a.example"]\nname = "X-K"\nvalue = "x"',
            ["'p'", "'value'", "inline"],
        ),
        (
            'type = "oauth2_client_credentials"\nhosts = ["a.example"]\n'
            'token_url = "https://a.example/t"\nclient_id = "c"\nclient_secret = "x"',
            ["'p'", "'client_secret'", "client_secret_env"],
        ),
        ('type = "digest"\nhosts = ["a.example"]', ["'p'", "'type'", "'digest'", "bearer"]),
        ('hosts = ["a.example"]\ntoken_env = "API_TOKEN"', ["'p'", "'type'", "missing"]),
        (
            'type = "bearer"\nhosts = ["a.example"]\ntoken_env = "NOPE"',
            ["'p'", "token_env", "NOPE"],
        ),
        ('type = "bearer"\nhosts = ["a.example"]\ntoken_env = "EMPTY"', ["'p'", "EMPTY", "empty"]),
        ('type = "bearer"\nhosts = []\ntoken_env = "API_TOKEN"', ["'p'", "'hosts'"]),
        ('type = "bearer"\ntoken_env = "API_TOKEN"', ["'p'", "'hosts'", "missing"]),
        (
            'type = "bearer"\nhosts = ["a.example/x"]\ntoken_env = "API_TOKEN"',
            ["'hosts'", "a.example/x"],
        ),
        (
            'type = "bearer"\nhosts = ["a.example"]\ntoken_env = "API_TOKEN"\nheader = "X"',
            ["'p'", "unknown", "'header'"],
        ),
        ('type = "query"\nhosts = ["a.example"]\nvalue_env = "API_KEY"', ["'p'", "'param'"]),
        (
            'type = "oauth2_client_credentials"\nhosts = ["a.example"]\n'
            'token_url = "ftp://a.example/t"\nclient_id = "c"\nclient_secret_env = "CS"',
            ["'p'", "'token_url'", "http"],
        ),
    ],
)
def test_a_bad_profile_is_refused_naming_the_profile_and_field(
    tmp_path: Path, body: str, words: list[str]
) -> None:
    """Inline secrets, unknown types and keys, missing fields, unset or empty variables, empty
    hosts and a non-http token URL each stop start-up with a message naming what to fix."""
    message = _refusal(tmp_path, f"[profiles.p]\n{body}\n", {**ENV, "EMPTY": ""})
    assert message.startswith("HARVESTER_CREDENTIALS (")
    for word in words:
        assert word in message, message
    assert "\n" not in message


def test_an_unreadable_or_invalid_file_is_refused(tmp_path: Path) -> None:
    """Invalid TOML and a missing file are one-line errors naming the setting."""
    assert "not valid TOML" in _refusal(tmp_path, "[profiles.p\n")
    with pytest.raises(ConfigError, match=r"HARVESTER_CREDENTIALS .*cannot read"):
        load_credentials(tmp_path / "missing.toml", ENV)


def test_an_inline_secret_is_never_quoted_in_the_refusal(tmp_path: Path) -> None:
    """The refusal names the field, never its value."""
    message = _refusal(tmp_path, '[profiles.p]\ntype = "bearer"\nhosts = ["a"]\ntoken = "zz-9"\n')
    assert "zz-9" not in message


def test_profile_names_need_no_secrets(tmp_path: Path) -> None:
    """An intake reads the names alone: the variables need not be set there."""
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    assert profile_names(path) == {"crm", "hdr", "q", "b", "o"}


def test_a_secret_goes_only_to_the_listed_host_and_port(tmp_path: Path) -> None:
    """A bare host means the scheme's default port; host:port that port; never a downgrade."""
    crm = _load(tmp_path, GOOD).profiles["crm"]
    first = URL("https://api.example.com/v1")
    assert may_send(crm, URL("https://api.example.com/v1/x"), first)
    assert may_send(crm, URL("https://API.example.com:443/x"), first)
    assert not may_send(crm, URL("https://api.example.com:8443/x"), first)
    assert not may_send(crm, URL("https://other.example.com/x"), first)
    assert not may_send(crm, URL("http://api.example.com/x"), first)  # https -> http
    local = URL("http://127.0.0.1:8443/x")
    assert may_send(crm, local, local)
    assert not may_send(crm, URL("http://127.0.0.1:8444/x"), local)


def test_unsigned_takes_only_a_query_profiles_parameter_off_a_url() -> None:
    """A next link that echoes the key loses it and keeps every other byte; other profile
    types and URLs without the parameter are left as they are."""
    query = Profile("q", "query", frozenset(), "api_key", "s3cr3t")
    bearer = Profile("b", "bearer", frozenset(), "", "s3cr3t")
    assert unsigned(query, "https://a.test/x?api_key=s3cr3t&page=2") == "https://a.test/x?page=2"
    assert unsigned(query, "https://a.test/x?q=a%20b&api_key=s3cr3t") == "https://a.test/x?q=a%20b"
    assert unsigned(query, "https://a.test/x?api_key=s3cr3t#f") == "https://a.test/x#f"
    assert unsigned(query, "https://a.test/api_key?x=1") == "https://a.test/api_key?x=1"
    assert unsigned(query, "https://a.test/x?my_api_key=1") == "https://a.test/x?my_api_key=1"
    assert unsigned(bearer, "https://a.test/x?api_key=s3cr3t") == "https://a.test/x?api_key=s3cr3t"
    assert unsigned(None, "https://a.test/x?api_key=1") == "https://a.test/x?api_key=1"
