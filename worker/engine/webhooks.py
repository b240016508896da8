"""Completion webhooks: signing, one delivery attempt, and the loop that delivers the outbox.

A webhook is a POST of the outbox row's body (`worker.engine.outbox`) with

    Harvester-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">
    Harvester-Delivery: <the row's delivery id, the same on every attempt>

(Stripe's scheme; a second ``v1`` by HARVESTER_WEBHOOK_SECRET_PREVIOUS while one is rotated).
It goes through the process's one session, so the SSRF guard judges the receiver's host, every
address it resolves to and the socket, at every attempt, and through the proxy the settings
route the receiver to, as fetches do (the guard then judges the receiver before the proxy is
asked); redirects are not followed; the answer
is read up to `MAX_ANSWER_BYTES` within HARVESTER_WEBHOOK_TIMEOUT. Anything but a 2xx (a
timeout, a refused connection, a 3xx) is retried after the job backoff until the row is
HARVESTER_WEBHOOK_MAX_AGE old, then given up (``failed``: ``harvester webhooks redeliver``). A
receiver the guard refuses is given up at once: the next attempt would be refused too.
The secrets are signing keys only: never sent, stored or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
import asyncpg
from yarl import URL

from worker.engine import counters as metrics
from worker.engine import outbox
from worker.engine.bodies import clean_detail
from worker.engine.outbox import Due
from worker.engine.proxy import Egress, way_out
from worker.engine.session import address_policy, map_client_error, proxy_refusal
from worker.errors import BlockedError, FetchError, InvalidURLError, StoreError
from worker.logs import register_secret
from worker.settings import Settings

log = logging.getLogger("harvester.webhooks")

MAX_ANSWER_BYTES: Final = 4096  # a receiver's answer is read this far, then dropped
POLL_S: Final = 1.0  # how often a worker looks for due deliveries
CLAIM_LIMIT: Final = 16  # deliveries a worker attempts at once
CLAIM_MARGIN_S: Final = 5.0  # a claim outlives its attempt's timeout by this much
# A refusal that another attempt would meet again: give up at once.
_FINAL: Final = (BlockedError, InvalidURLError)


def signature(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """The ``Harvester-Signature`` value of ``body`` sent at ``timestamp``: one ``v1`` per
    secret, the current one first."""
    signed = str(timestamp).encode() + b"." + body
    parts = [f"t={timestamp}"]
    parts += ["v1=" + hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join(parts)


def signing_secrets(settings: Settings) -> list[str]:
    """The secrets webhooks are signed with (current first); registered with the log scrubber."""
    secrets = [
        s.get_secret_value()
        for s in (settings.webhook_secret, settings.webhook_secret_previous)
        if s is not None
    ]
    for secret in secrets:
        register_secret(secret)
    return secrets


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST got: a 2xx, or why not (the status when the receiver answered)."""

    ok: bool
    status: int | None = None
    error: str | None = None
    final: bool = False  # another attempt would be refused the same way


class Deliverer:
    """Delivers due outbox rows through the process's session; one per worker process."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._pool = pool
        self._settings = settings
        self._policy = address_policy(settings)
        self._egress = Egress.from_settings(settings, self._policy)
        self._secrets = signing_secrets(settings)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def post(self, due: Due) -> Attempt:
        """One attempt at ``due``; never raises for the receiver's faults."""
        headers = {
            "Content-Type": "application/json",
            "Harvester-Signature": signature(self._secrets, int(self._clock()), due.body),
            "Harvester-Delivery": str(due.delivery_id),
        }
        timeout = self._settings.webhook_timeout
        try:
            # The whole attempt, the receiver's lookup before a proxy included, within the
            # timeout: the claim outlives it by CLAIM_MARGIN_S only, then another worker may
            # send the same delivery.
            async with asyncio.timeout(timeout):
                url = URL(due.url)
                self._policy.check(url.raw_host or "")
                sent, proxy, to_proxy = await way_out(self._egress, url, headers)
                async with self._session.post(
                    url,
                    data=due.body,
                    headers=sent,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    proxy=proxy,
                    proxy_headers=to_proxy,
                ) as resp:
                    await resp.content.read(MAX_ANSWER_BYTES)
                    status = resp.status
            if status == 407 and proxy is not None:
                raise proxy_refusal(status)
        except FetchError as exc:  # the guard refused the host, or the proxy the credentials
            return Attempt(False, None, exc.detail, final=isinstance(exc, _FINAL))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            mapped = map_client_error(exc)
            return Attempt(False, None, mapped.detail, final=isinstance(mapped, _FINAL))
        if 200 <= status < 300:
            return Attempt(True, status)
        return Attempt(False, status, f"HTTP {status}")

    async def deliver(self, due: Due) -> Attempt:
        """Attempt ``due`` and record what came of it."""
        attempt = await self.post(due)
        retry_in: float | None = None
        if not attempt.ok and not attempt.final:
            delay = self._settings.job_backoff.delay(due.attempt)
            if due.age + delay < self._settings.webhook_max_age:
                retry_in = delay
        error = None if attempt.error is None else clean_detail(attempt.error)
        await outbox.settle(
            self._pool,
            due,
            delivered=attempt.ok,
            status=attempt.status,
            error=error,
            retry_in=retry_in,
        )
        extra = {"id": due.id, "delivery": str(due.delivery_id), "attempt": due.attempt}
        result = "delivered" if attempt.ok else "retry" if retry_in is not None else "failed"
        metrics.WEBHOOKS.labels(result=result).inc()
        if attempt.ok:
            log.info("webhook.delivered", extra={**extra, "status": attempt.status})
        elif retry_in is None:
            log.warning("webhook.failed", extra={**extra, "error": error})
        else:
            log.info("webhook.retry", extra={**extra, "error": error, "in_s": round(retry_in, 1)})
        return attempt

    async def deliver_due(self) -> int:
        """Claim the deliveries due now and attempt them together; return how many."""
        hold = self._settings.webhook_timeout + CLAIM_MARGIN_S
        due = await outbox.claim(self._pool, CLAIM_LIMIT, hold)
        await asyncio.gather(*(self.deliver(d) for d in due))
        return len(due)

    async def _loop(self) -> None:
        while True:
            try:
                if await self.deliver_due() == CLAIM_LIMIT:
                    continue  # more may be due
            except StoreError as exc:
                log.warning("webhook.store_unavailable", extra={"error": str(exc)})
            await asyncio.sleep(POLL_S)

    def start(self) -> None:
        """Deliver in the background until `stop`."""
        self._task = asyncio.create_task(self._loop(), name="harvester-webhooks")

    async def stop(self) -> None:
        """Stop delivering; an attempt cut short is claimed again once its claim lapses."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
