"""Credential profiles: the TOML file named by ``HARVESTER_CREDENTIALS``, read and refused early.

A job names a profile (``auth: "NAME"``); the profile lives on the worker, never in the job.
Each ``[profiles.NAME]`` table has a ``type``, the ``hosts`` its secret may go to, and its
secrets by reference only: the name of an environment variable holding each one. A file that
holds a secret inline, names an unknown type or key, lacks a field, or names a variable that is
unset or empty is refused with a `ConfigError` naming the profile and the field.

The variables a profile names are the operator's choice, not harvester settings, so this module
reads them from the environment it is given (the process's, by default).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from yarl import URL

from worker.engine.requests import HEADER_NAME
from worker.errors import ConfigError
from worker.logs import register_secret

# type -> (required fields, optional fields), secrets as *_env references.
_FIELDS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "bearer": (("token_env",), ()),
    "header": (("name", "value_env"), ()),
    "query": (("param", "value_env"), ()),
    "basic": (("username", "password_env"), ()),
    "oauth2_client_credentials": (("token_url", "client_id", "client_secret_env"), ("scope",)),
}
TYPES: Final = tuple(_FIELDS)
# Keys that would hold a secret in the file itself; each has an *_env twin.
_INLINE: Final = ("token", "value", "password", "client_secret", "secret", "access_token")
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class Profile:
    """One credential profile, its secret resolved from the environment.

    ``key`` is what the type names besides the secret: the header name, the query parameter, the
    basic user name or the OAuth2 client id. ``secret`` is the token, header value, parameter
    value, password or client secret.
    """

    name: str
    type: str
    hosts: frozenset[tuple[str, int | None]]
    key: str
    secret: str
    token_url: str = ""
    scope: str | None = None

    def __repr__(self) -> str:  # never the secret, whatever prints a profile
        return f"Profile(name={self.name!r}, type={self.type!r})"

    def allows(self, url: URL) -> bool:
        """Whether this profile's secret may be sent to ``url``: its host is listed, with its
        port, or bare for the scheme's default port (``api.example.com`` is 443 for https)."""
        host = (url.host or "").lower()
        if (host, url.port) in self.hosts:
            return True
        return (host, None) in self.hosts and url.is_default_port()


@dataclass(frozen=True, slots=True)
class Credentials:
    """The profiles of a credentials file, by name (empty when none is configured)."""

    profiles: Mapping[str, Profile]

    def get(self, name: str) -> Profile | None:
        return self.profiles.get(name)


NO_CREDENTIALS: Final = Credentials({})


def load_credentials(path: Path | None, environ: Mapping[str, str] | None = None) -> Credentials:
    """The profiles of the file at ``path`` (None: no profiles), or `ConfigError` naming the
    profile and field at fault."""
    if path is None:
        return NO_CREDENTIALS
    env = os.environ if environ is None else environ
    where = f"HARVESTER_CREDENTIALS ({path})"
    data = _read(path, where)
    extra = sorted(set(data) - {"profiles"})
    if extra:
        raise ConfigError(f"{where}: unknown top-level key(s) {extra}; only [profiles.NAME]")
    tables = data.get("profiles", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: 'profiles' must be tables: [profiles.NAME]")
    profiles = {}
    for name, table in tables.items():
        problem = _profile_problem(name, table)
        if problem is not None:
            raise ConfigError(f"{where}: profile {name!r}: {problem}")
        try:
            profiles[name] = _profile(name, table, env)
        except ValueError as exc:
            raise ConfigError(f"{where}: profile {name!r}: {exc}") from None
    for profile in profiles.values():
        register_secret(profile.secret)  # hidden from every log line and failure detail
    return Credentials(profiles)


def _profile_problem(name: str, table: object) -> str | None:
    if not NAME.fullmatch(name):
        return "the name must be letters, digits, '_', '.', '-' (at most 64)"
    if not isinstance(table, dict):
        return "must be a table: [profiles.NAME]"
    kind = table.get("type")
    if kind is None:
        return "field 'type' is missing; one of " + ", ".join(TYPES)
    if kind not in _FIELDS:
        return f"field 'type': unknown type {kind!r}; one of " + ", ".join(TYPES)
    inline = [k for k in table if k in _INLINE]
    if inline:
        field = inline[0]
        return (
            f"field {field!r} holds a secret inline; put it in an environment variable and "
            f"name that variable in '{_env_twin(kind, field)}'"
        )
    required, optional = _FIELDS[kind]
    unknown = sorted(set(table) - {"type", "hosts", *required, *optional})
    if unknown:
        return f"unknown field(s) {unknown} for type {kind!r}; allowed: " + ", ".join(
            ("hosts", *required, *optional)
        )
    for field in ("hosts", *required):
        if field not in table:
            return f"field {field!r} is missing"
    for field in (*required, *optional):
        if field in table and not (isinstance(table[field], str) and table[field].strip()):
            return f"field {field!r} must be a non-empty string"
    return None


def _env_twin(kind: str, field: str) -> str:
    required, _ = _FIELDS[kind]
    return next((f for f in required if f.endswith("_env")), f"{field}_env")


def _profile(name: str, table: dict[str, object], env: Mapping[str, str]) -> Profile:
    kind = str(table["type"])
    required, _ = _FIELDS[kind]
    (secret_field,) = [f for f in required if f.endswith("_env")]
    variable = str(table[secret_field])
    secret = env.get(variable, "")
    if not secret:
        state = "empty" if variable in env else "unset"
        raise ValueError(f"field {secret_field!r}: the environment variable {variable} is {state}")
    if secret != secret.strip() or any(c in secret for c in "\r\n\x00"):
        raise ValueError(
            f"field {secret_field!r}: the value of {variable} has surrounding whitespace or a "
            "line break"
        )
    key = next((str(table[f]) for f in required if not f.endswith("_env") and f != "token_url"), "")
    if kind == "header" and not HEADER_NAME.fullmatch(key):
        raise ValueError(f"field 'name': {key!r} is not a header name")
    token_url = str(table.get("token_url", ""))
    if kind == "oauth2_client_credentials":
        _check_token_url(token_url)
    scope = table.get("scope")
    return Profile(
        name=name,
        type=kind,
        hosts=_hosts(table["hosts"]),
        key=key,
        secret=secret,
        token_url=token_url,
        scope=str(scope) if scope is not None else None,
    )


def _check_token_url(raw: str) -> None:
    try:
        url = URL(raw)
        ok = url.scheme in ("http", "https") and bool(url.host)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"field 'token_url': {raw!r} is not an http(s) URL with a host")


def _hosts(value: object) -> frozenset[tuple[str, int | None]]:
    if not isinstance(value, list) or not value:
        raise ValueError("field 'hosts' must be a non-empty list of 'host' or 'host:port'")
    entries = [e for e in value if isinstance(e, str)]
    if len(entries) != len(value):
        raise ValueError("field 'hosts': every entry must be a string")
    hosts = set()
    for entry in entries:
        try:
            url = URL(f"http://{entry}")
            host, port = url.host, url.explicit_port
        except (ValueError, TypeError):
            host, port = None, None
        if not host or url.raw_path not in ("", "/") or url.user or url.query_string:
            raise ValueError(f"field 'hosts': {entry!r} is not 'host' or 'host:port'")
        hosts.add((host.lower(), port))
    return frozenset(hosts)


def profile_names(path: Path) -> frozenset[str]:
    """The profile names of the credentials file at ``path``, for an intake that checks a job's
    ``auth`` without holding the secrets (their variables need not be set there)."""
    tables = _read(path, f"HARVESTER_CREDENTIALS ({path})").get("profiles", {})
    return frozenset(tables) if isinstance(tables, dict) else frozenset()


def _read(path: Path, where: str) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
