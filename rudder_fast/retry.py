"""The retry policy: what each answer of the data plane means, and how long to wait before trying again.
Pure: clock and randomness injected.

Outcomes follow docs/wire.md, deciding on the status code alone (the bodies are plain text and have changed
wording between server versions):

======================  ==========================================================================
200                     delivered: acknowledge
400                     the request holds an event the server refuses: bisect; one event → quarantine
413                     too large: split in halves; a single event still too large → quarantine
401                     bad or missing write key: halt sending (keep everything), retry rarely
404                     source disabled: keep everything, back off long
429, 5xx, other         transient: back off (see below), honouring Retry-After
connection error,       transient, as above: the same messageIds make a resend safe; a TLS certificate
timeout                 refused is a configuration problem, retried slowly
======================  ==========================================================================

:meth:`RetryPolicy.decide` classifies one answer; the waits between attempts are the delivery gate's
(:mod:`rudder_fast.gate`), which asks :meth:`RetryPolicy.probe_delay` for the next one. While the data
plane fails, one request at a time probes it; probe n waits a random time in [c/2, c] with
c = min(cap, base * 2**(n-1)) ("equal jitter": never zero, so one probe is never followed at once by the
next, yet senders recovering from the same outage spread out). The cap is short while the outage is
young, so that delivery resumes within seconds of the data plane's return, and grows with the outage
(a tenth of its length so far) up to ``cap``: a long outage costs a data plane one probe per sender
every half minute, and the time lost after it is at most about a tenth of it.

Nothing here ever decides to drop an event because the network or the server is unwell.
"""

from __future__ import annotations

import email.utils
import enum
from dataclasses import dataclass
from typing import Final, Protocol


class Action(enum.Enum):
    ACK = "ack"
    RETRY = "retry"  # the same events again, when the gate allows (not before ``delay``)
    SPLIT = "split"  # 413: send the halves separately
    BISECT = "bisect"  # 400: send the halves separately to find the refused events
    QUARANTINE = "quarantine"  # a single event the server refuses: write it to rejected/
    HALT = "halt"  # 401: configuration is wrong; keep everything, probe again after ``delay``
    DISABLED = "disabled"  # 404: source disabled; keep everything, probe again after ``delay``


# The actions after which the data plane counts as working: it answered, and with a verdict on the events.
ANSWERED: Final = frozenset({Action.ACK, Action.SPLIT, Action.BISECT, Action.QUARANTINE})


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0  # for RETRY, HALT, DISABLED: the least wait before the next attempt
    reason: str = ""


class RandomSource(Protocol):
    def random(self) -> float: ...


# Defaults and their reasons.
BACKOFF_BASE_S: Final = 0.5  # first probe soon: most 5xx and resets are momentary
# While an outage is young, probes are at most this far apart: delivery resumes within this long of the
# data plane's return, at the cost of about one request a second per sender.
BACKOFF_SHORT_CAP_S: Final = 2.0
BACKOFF_CAP_FRACTION: Final = 0.1  # then the cap grows to this fraction of the outage's length so far...
BACKOFF_CAP_S: Final = 30.0  # ...up to this: an outage ends, and we see it within half a minute
HALT_RETRY_S: Final = 60.0  # 401: a key fixed in the dashboard is picked up within a minute
DISABLED_RETRY_S: Final = 120.0  # 404: a re-enabled source is picked up within two minutes
# A certificate refused (expired, another host's, an unknown CA) is fixed by a person, not by a retry a
# second later: tried again every half minute, which picks up a renewed certificate soon enough.
TLS_RETRY_S: Final = 30.0
RETRY_AFTER_MAX_S: Final = 600.0  # a proxy's Retry-After is honoured, but never for more than this


class ErrorKind(enum.Enum):
    """Why a request got no HTTP answer (a :class:`~rudder_fast.transport.TransportError`'s ``kind``)."""

    CONNECT = "connect"  # refused, unreachable, connect timeout, reset
    TIMEOUT = "timeout"  # no complete answer by the request's deadline
    DNS = "dns"  # the name did not resolve (or not in time)
    TLS = "tls"  # the certificate was refused, or the server does not speak TLS
    PROXY = "proxy"  # the forward proxy failed
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Maps a status (or a transport error) to a :class:`Decision`, and schedules probes (see the module
    docstring)."""

    base: float = BACKOFF_BASE_S
    short_cap: float = BACKOFF_SHORT_CAP_S
    cap_fraction: float = BACKOFF_CAP_FRACTION
    cap: float = BACKOFF_CAP_S
    halt_retry: float = HALT_RETRY_S
    disabled_retry: float = DISABLED_RETRY_S
    tls_retry: float = TLS_RETRY_S
    retry_after_max: float = RETRY_AFTER_MAX_S

    def probe_delay(self, failures: int, down_for: float, rng: RandomSource) -> float:
        """The wait after the ``failures``-th consecutive failed attempt on a data plane that has been
        failing for ``down_for`` seconds."""
        cap = min(self.cap, max(self.short_cap, down_for * self.cap_fraction))
        ceiling = min(cap, self.base * (2.0 ** min(max(failures, 1) - 1, 30)))
        return ceiling * (0.5 + 0.5 * rng.random())

    def decide(
        self,
        status: int | None,
        *,
        batch_size: int,
        retry_after: float | None = None,
        error: str = "",
        error_kind: ErrorKind = ErrorKind.OTHER,
    ) -> Decision:
        """``status`` is the HTTP status, or None for a request without an answer (``error`` says why,
        ``error_kind`` what kind of failure it was)."""
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
        delay = 0.0 if retry_after is None else min(max(retry_after, 0.0), self.retry_after_max)
        if status is None:
            return self._unanswered(delay, error, error_kind)
        return Decision(Action.RETRY, delay, _PLAIN_STATUS.get(status, f"HTTP {status}"))

    def _unanswered(self, delay: float, error: str, error_kind: ErrorKind) -> Decision:
        """A request without an HTTP answer: retried; a refused certificate slowly, and said as it is
        ("TLS certificate verify failed: ..."), not as a connection that failed."""
        if error_kind is ErrorKind.TLS:
            return Decision(Action.RETRY, max(delay, self.tls_retry), error or "TLS failure")
        return Decision(Action.RETRY, delay, f"connection error: {error}" if error else "connection error")


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
