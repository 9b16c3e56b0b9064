"""The retry policy: what to do with each answer of the data plane. Pure: clock and randomness injected.

Outcomes follow docs/wire.md, deciding on the status code alone (the bodies are plain text and have changed
wording between server versions):

======================  ==========================================================================
200                     delivered: acknowledge
400                     the request holds an event the server refuses: bisect; one event → quarantine
413                     too large: split in halves; a single event still too large → quarantine
401                     bad or missing write key: halt sending (keep everything), retry rarely
404                     source disabled: keep everything, back off long
429, 5xx, other         transient: exponential backoff with full jitter, capped, honouring Retry-After
connection error,       transient, as above: the same messageIds make a resend safe
timeout
======================  ==========================================================================

Nothing here ever decides to drop an event because the network or the server is unwell.
"""

from __future__ import annotations

import email.utils
import enum
from dataclasses import dataclass
from typing import Final, Protocol


class Action(enum.Enum):
    ACK = "ack"
    RETRY = "retry"  # the same events again after ``delay``
    SPLIT = "split"  # 413: send the halves separately
    BISECT = "bisect"  # 400: send the halves separately to find the refused events
    QUARANTINE = "quarantine"  # a single event the server refuses: write it to rejected/
    HALT = "halt"  # 401: configuration is wrong; keep everything, probe again after ``delay``
    DISABLED = "disabled"  # 404: source disabled; keep everything, probe again after ``delay``


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0
    reason: str = ""


class RandomSource(Protocol):
    def random(self) -> float: ...


# Defaults and their reasons.
BACKOFF_BASE_S: Final = 0.5  # first retry soon: most 5xx and resets are momentary
BACKOFF_CAP_S: Final = 30.0  # at most this long between tries: an outage ends, and we see it quickly
HALT_RETRY_S: Final = 60.0  # 401: a key fixed in the dashboard is picked up within a minute
DISABLED_RETRY_S: Final = 120.0  # 404: a re-enabled source is picked up within two minutes
RETRY_AFTER_MAX_S: Final = 600.0  # a proxy's Retry-After is honoured, but never for more than this


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Maps (status or transport error, attempt number) to a :class:`Decision`.

    ``attempt`` counts consecutive failed tries of the same request, from 1. Backoff for attempt n is
    uniform in [0, min(cap, base * 2**(n-1))] ("full jitter"), so many senders recovering from the same
    outage do not stampede the data plane together; a ``Retry-After`` longer than that wins.
    """

    base: float = BACKOFF_BASE_S
    cap: float = BACKOFF_CAP_S
    halt_retry: float = HALT_RETRY_S
    disabled_retry: float = DISABLED_RETRY_S
    retry_after_max: float = RETRY_AFTER_MAX_S

    def backoff(self, attempt: int, rng: RandomSource) -> float:
        ceiling = min(self.cap, self.base * (2.0 ** min(max(attempt, 1) - 1, 30)))
        return rng.random() * ceiling

    def decide(
        self,
        status: int | None,
        *,
        attempt: int,
        batch_size: int,
        rng: RandomSource,
        retry_after: float | None = None,
        error: str = "",
    ) -> Decision:
        """``status`` is the HTTP status, or None for a connection error or timeout (``error``)."""
        if status is not None and 200 <= status < 300:
            return Decision(Action.ACK)
        if status == 400:
            if batch_size <= 1:
                return Decision(Action.QUARANTINE, reason="400 from the data plane")
            return Decision(Action.BISECT, reason="400: bisecting to find the refused events")
        if status == 413:
            if batch_size <= 1:
                return Decision(Action.QUARANTINE, reason="413: the event alone is over the size limit")
            return Decision(Action.SPLIT, reason="413: splitting the batch")
        if status == 401:
            return Decision(Action.HALT, self.halt_retry, "401: the write key was refused")
        if status == 404:
            return Decision(Action.DISABLED, self.disabled_retry, "404: a wrong path or a disabled source")
        delay = self.backoff(attempt, rng)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        if status is None:
            reason = f"connection error: {error}" if error else "connection error"
        else:
            reason = _PLAIN_STATUS.get(status, f"HTTP {status}")
        return Decision(Action.RETRY, delay, reason)


# Answers that come from something between the sender and the data plane, said plainly.
_PLAIN_STATUS: Final = {
    407: "HTTP 407 from the proxy: it wants credentials (http://user:password@host:port in --proxy)",
    403: "HTTP 403: refused by the data plane or by a proxy on the way",
}


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)
