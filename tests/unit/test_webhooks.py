"""Completion webhooks without services: the signature, the job field, the settings."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import Callable

import pytest

from worker.engine.outbox import Due
from worker.engine.session import create_session
from worker.engine.webhooks import Deliverer, signature
from worker.errors import BadJobError, ConfigError
from worker.queue.payload import make_batch, parse_batch
from worker.settings import Settings, load_settings


def test_signature_is_stripes_scheme() -> None:
    """t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">, as a receiver recomputes it."""
    body = b'{"job_id":"j"}'
    want = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(["k" * 16], 1_700_000_000, body) == f"t=1700000000,v1={want}"


def test_a_rotated_secret_adds_a_second_v1_after_the_current_one() -> None:
    """While HARVESTER_WEBHOOK_SECRET_PREVIOUS is set, one v1 per secret, the current first."""
    sig = signature(["new" * 6, "old" * 6], 5, b"{}")
    parts = sig.split(",")
    assert parts[0] == "t=5"
    assert parts[1:] == [
        "v1=" + hmac.new(s.encode(), b"5.{}", hashlib.sha256).hexdigest()
        for s in ("new" * 6, "old" * 6)
    ]


def test_notify_url_without_a_secret_is_refused_in_a_sentence() -> None:
    """An intake or worker without HARVESTER_WEBHOOK_SECRET refuses the job and says why."""
    with pytest.raises(BadJobError, match="'notify_url' needs HARVESTER_WEBHOOK_SECRET"):
        parse_batch(
            (),
            {"urls": ["https://a.example/"], "notify_url": "https://h.example/"},
            max_urls=10,
            job_id="j",
            webhooks=False,
        )
    batch = make_batch(urls=["https://a.example/"], notify_url="https://h.example/", webhooks=True)
    assert batch.as_kwargs()["notify_url"] == "https://h.example/"


@pytest.mark.parametrize(
    ("url", "said"),
    [("ftp://h.example/", "scheme 'ftp' is not http or https"), ("https:///x", "has no host")],
)
def test_a_notify_url_that_is_no_http_url_is_refused(url: str, said: str) -> None:
    """The job's notify_url must be an absolute http(s) URL."""
    with pytest.raises(BadJobError, match=f"'notify_url' {said}"):
        make_batch(urls=["https://a.example/"], notify_url=url, webhooks=True)


def test_webhook_secrets_are_checked_without_being_quoted() -> None:
    """A short secret, or a previous one without a current one, stops start-up by name."""
    with pytest.raises(ConfigError, match="HARVESTER_WEBHOOK_SECRET: must be at least 16") as e:
        load_settings(webhook_secret="short-secret")
    assert "short-secret" not in str(e.value)
    with pytest.raises(ConfigError, match="SECRET_PREVIOUS is set without"):
        load_settings(webhook_secret_previous="x" * 20)


async def test_an_attempt_through_a_proxy_ends_within_the_webhook_timeout(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver's DNS lookup, made before the proxy is asked, is part of the attempt: a
    resolver that never answers costs HARVESTER_WEBHOOK_TIMEOUT, not the claim's whole hold."""
    settings = make_settings(
        proxy_url="http://127.0.0.1:9",
        webhook_secret="whsec-unit-0123456789abcdef",
        webhook_timeout=0.2,
    )
    loop = asyncio.get_running_loop()
    never = asyncio.Event()

    async def hanging(*_args: object, **_kwargs: object) -> None:
        await never.wait()

    monkeypatch.setattr(loop, "getaddrinfo", hanging)
    session = create_session(settings)
    try:
        deliverer = Deliverer(session, None, settings)  # type: ignore[arg-type]  # post needs no pool
        due = Due(1, uuid.uuid4(), "http://receiver.example/hook", b"{}", 1, 0.0)
        attempt = await asyncio.wait_for(deliverer.post(due), timeout=10)
    finally:
        await session.close()
    assert (attempt.ok, attempt.final) == (False, False)
    assert attempt.error is not None
