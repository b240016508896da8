"""The one backoff policy: exponential waits with jitter, for every retry harvester makes.

`Backoff` spaces URL retries (full jitter, after the server's Retry-After when it sends one),
the deferral of a whole job while Postgres is away (equal jitter, so a deferral is never near
zero), the quick retries of a chunk write (through tenacity), and Redis commands during an
outage (through redis-py's Retry; see `worker.queue.connection`). Tests switch waits off with a
zero base (HARVESTER_RETRY_BASE_DELAY=0).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tenacity import RetryCallState


@dataclass(frozen=True, slots=True)
class Backoff:
    """``base * 2**(attempt-1)`` capped at ``cap``, jittered.

    ``full`` jitter waits uniformly in [0, ceiling] (AWS's advice for many clients retrying one
    server); ``equal`` waits in [ceiling / 2, ceiling], for waits that must not collapse to zero.
    """

    base: float
    cap: float
    jitter: Literal["full", "equal"] = "full"

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must not be negative")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        return min(self.cap, self.base * 2.0 ** min(attempt - 1, 62))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A wait after failed try number ``attempt``."""
        ceiling = self.ceiling(attempt)
        if ceiling <= 0:
            return 0.0
        low = ceiling / 2 if self.jitter == "equal" else 0.0
        return (rng or random).uniform(low, ceiling)

    def tenacity_wait(self) -> Callable[[RetryCallState], float]:
        """This policy as a tenacity ``wait=``."""
        return lambda state: self.delay(state.attempt_number)
