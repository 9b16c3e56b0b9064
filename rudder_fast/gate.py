"""The delivery gate: which data plane each attempt goes to, how many attempts may be in flight, and when
the next may start. Pure (sans-I/O): the caller passes ``now`` and the randomness, and does the waiting.

How this works
--------------
Each of the sender's workers holds one batch. Before every attempt it asks :meth:`Gate.acquire` for a
:class:`Permit` (or learns how long to wait), and when the attempt is over it tells the gate how the
data plane took it: :meth:`Gate.answered` (an answer with a verdict on the events: 2xx, 400, 413) or
:meth:`Gate.failed` (no answer, 429, 5xx, 401, 404). The gate keeps one :class:`Endpoint` per data
plane, in the order they were given: the first is preferred.

* **Normal traffic** goes to the first data plane not known to be failing, up to ``concurrency``
  attempts at once.
* **Failover.** A failure marks its data plane down, and traffic moves at once, without a wait, to the
  next one not known to be failing. The failure of an attempt that was already in flight when its data
  plane was marked down teaches nothing new: it only extends the wait if it brought a ``Retry-After``.
* **Outage.** While every data plane is down, at most one attempt is in flight, sender-wide: a *probe*,
  to the first data plane whose wait is over. After each failed probe the next wait is the policy's
  (:meth:`~rudder_fast.retry.RetryPolicy.probe_delay`), and never shorter than the decision asked for
  (a ``Retry-After``, 60 s after a 401, 30 s after a refused certificate). The first probe answered
  marks its data plane up, and every waiting worker may go at once: full concurrency resumes for the
  backlog.
* **Return.** While a later data plane carries the traffic, the earlier ones are probed on the same
  schedule (one probe at a time); the first of them to answer takes the traffic back.

A batch belongs to one worker, which makes one attempt at a time: a batch is never in flight to two data
planes at once, and the gate never decides to drop anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from .retry import RandomSource, RetryPolicy

# An endpoint's states. Up: STARTING (the first, before its first answer), STANDBY (a later one, not
# needed yet), OK. Down: BACKOFF (no answer, 429, 5xx), HALTED (401), DISABLED (404).
STARTING: Final = "starting"
STANDBY: Final = "standby"
OK: Final = "ok"
BACKOFF: Final = "backoff"
HALTED: Final = "halted"
DISABLED: Final = "disabled"
DOWN_STATES: Final = frozenset({BACKOFF, HALTED, DISABLED})


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave for one attempt: to which data plane, whether it is a probe, and when it started."""

    serial: int
    endpoint: int
    probe: bool
    started: float


class Endpoint:
    """One data plane's standing (see the module docstring)."""

    __slots__ = ("down_since", "failures", "index", "retry_at", "state")

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = STARTING if index == 0 else STANDBY
        self.down_since: float | None = None
        self.failures = 0  # consecutive failed attempts since it went down (the first one included)
        self.retry_at = 0.0  # while down: no probe before this

    def __repr__(self) -> str:
        if self.down_since is None:
            return f"<Endpoint {self.index} {self.state}>"
        return f"<Endpoint {self.index} {self.state} failures={self.failures} retry_at={self.retry_at:.1f}>"

    @property
    def up(self) -> bool:
        return self.down_since is None


class Gate:
    """The data planes' standing and the attempts in flight (see the module docstring). Not thread-safe:
    the caller holds a lock around every call."""

    def __init__(self, *, endpoints: int, concurrency: int, policy: RetryPolicy, rng: RandomSource) -> None:
        if endpoints < 1 or concurrency < 1:
            raise ValueError("a gate needs at least one data plane and one attempt in flight")
        self.endpoints = tuple(Endpoint(i) for i in range(endpoints))
        self.concurrency = concurrency
        self.policy = policy
        self.rng = rng
        self.inflight: dict[int, Permit] = {}
        self.answered_once = False
        self._serial = 0

    def __repr__(self) -> str:
        current = self.in_use()
        return (
            f"<Gate {self.state()} in_use={None if current is None else current.index} "
            f"inflight={len(self.inflight)} probing={self.probing()}>"
        )

    # -- what is known -------------------------------------------------------------------------------

    def in_use(self) -> Endpoint | None:
        """The data plane normal traffic goes to: the first not known to be failing (None: all are)."""
        for endpoint in self.endpoints:
            if endpoint.up:
                return endpoint
        return None

    def probing(self) -> bool:
        return any(permit.probe for permit in self.inflight.values())

    def state(self) -> str:
        """The sender's delivery state: ``starting`` until the first answer, ``ok`` while a data plane
        takes the traffic; when none does, ``halted`` if every one refused the write key (or some did
        and the others said the source is disabled), ``disabled`` if every one said so, else
        ``backoff``."""
        if self.in_use() is not None:
            return OK if self.answered_once else STARTING
        states = {endpoint.state for endpoint in self.endpoints}
        if states == {DISABLED}:
            return DISABLED
        if states <= {HALTED, DISABLED}:
            return HALTED
        return BACKOFF

    def oldest_started(self) -> float | None:
        """When the oldest attempt in flight started (None: nothing in flight)."""
        return min((permit.started for permit in self.inflight.values()), default=None)

    # -- attempts ------------------------------------------------------------------------------------

    def acquire(self, now: float) -> Permit | float:
        """A permit for one attempt now, or how long to wait before asking again (``math.inf``: until an
        attempt in flight is over)."""
        probing = self.probing()
        if not probing:
            target = self._due_probe(now)
            if target is not None:
                return self._grant(target, probe=True, now=now)
        current = self.in_use()
        if current is not None:
            if sum(1 for permit in self.inflight.values() if not permit.probe) < self.concurrency:
                return self._grant(current, probe=False, now=now)
            return math.inf
        if probing:
            return math.inf
        return max(0.0, min(endpoint.retry_at for endpoint in self.endpoints) - now)

    def answered(self, permit: Permit, now: float) -> None:
        """The data plane answered the attempt with a verdict on its events: it works."""
        del now  # (kept for symmetry with failed(): an answer's time changes nothing)
        self.inflight.pop(permit.serial, None)
        endpoint = self.endpoints[permit.endpoint]
        endpoint.state = OK
        endpoint.down_since = None
        endpoint.failures = 0
        endpoint.retry_at = 0.0
        self.answered_once = True

    def failed(self, permit: Permit, now: float, *, state: str = BACKOFF, floor: float = 0.0) -> None:
        """The attempt got no answer, or one that says "not now" (``state`` BACKOFF), "wrong key"
        (HALTED) or "source disabled" (DISABLED); the next attempt on that data plane waits at least
        ``floor`` seconds."""
        if state not in DOWN_STATES:
            raise ValueError(f"not a failure state: {state!r}")
        self.inflight.pop(permit.serial, None)
        endpoint = self.endpoints[permit.endpoint]
        if endpoint.down_since is None:
            endpoint.down_since = now
            endpoint.failures = 1
        elif permit.probe:
            endpoint.failures += 1
        else:  # in flight when the data plane was marked down: no news, but a Retry-After counts
            endpoint.retry_at = max(endpoint.retry_at, now + floor)
            return
        endpoint.state = state
        delay = self.policy.probe_delay(endpoint.failures, now - endpoint.down_since, self.rng)
        endpoint.retry_at = now + max(floor, delay)

    def release(self, permit: Permit) -> None:
        """The attempt ended without telling anything about the data plane (it was never made)."""
        self.inflight.pop(permit.serial, None)

    # -- internals -----------------------------------------------------------------------------------

    def _due_probe(self, now: float) -> Endpoint | None:
        """The data plane to probe now: the first down one, before the one in use, whose wait is over."""
        for endpoint in self.endpoints:
            if endpoint.up:
                return None  # the one in use: those after it are not probed, they are not needed
            if endpoint.retry_at <= now:
                return endpoint
        return None

    def _grant(self, endpoint: Endpoint, *, probe: bool, now: float) -> Permit:
        self._serial += 1
        permit = Permit(self._serial, endpoint.index, probe, now)
        self.inflight[permit.serial] = permit
        return permit
