"""Delivery: the worker threads that post batches, follow the retry policy and quarantine what the data
plane refuses; the delivery state they share; and logging that never repeats per event.

How this works
--------------
The sender's main thread hands a closed :class:`~rudder_fast.batching.Batch` to :class:`Workers`; one
worker owns it until it is resolved. It stamps ``sentAt``, gzips and posts it (through
:class:`~rudder_fast.transport.Transport`) and follows :class:`~rudder_fast.retry.RetryPolicy`: back
off and retry; split on 413; bisect on 400 and keep the refused events in ``rejected/``; hold
everything on 401/404. The worker reports an :class:`~rudder_fast.book.Outcome`; it never touches the
spool's segments or the ledger, which belong to the main thread.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from . import config, gate, safefile
from .batching import Batch, body_pieces, halves
from .book import Outcome
from .gate import Gate, Permit
from .retry import ANSWERED, Action, Decision, ErrorKind, RandomSource, RetryPolicy, parse_retry_after
from .transport import Response, Transport, TransportError, redact_url
from .wire import IsoClock

log = logging.getLogger("rudder_fast.sender")

QUARANTINE_RETRY_S = 5.0  # rejected/ cannot be written (a full disk): the refused event is kept, retried


class Recurring:
    """A kind of event that may happen once per event (a refused event, an unreadable record, a failing
    commit): the first is logged at once, then at most one line per ``interval_s`` with how many
    happened since, so a flood of them costs a line a minute, never one per event. Thread-safe."""

    def __init__(self, level: int, what: str, interval_s: float = 60.0) -> None:
        self.level = level
        self.what = what  # "events quarantined in rejected/": the summary reads "<n> <what> ..."
        self.interval_s = interval_s
        self.total = 0
        self._unlogged = 0
        self._logged_at: float | None = None
        self._lock = threading.Lock()

    def note(self, detail: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.total += 1
            self._unlogged += 1
            if self._logged_at is not None and now - self._logged_at < self.interval_s:
                return
            count, self._unlogged, first = self._unlogged, 0, self._logged_at is None
            self._logged_at = now
        if first:
            log.log(self.level, "%s (%s); further ones are summarised once a minute", self.what, detail)
        else:
            log.log(self.level, "%d %s in the last minute (last: %s)", count, self.what, detail)

    def flush(self) -> None:
        """At shutdown: the ones not yet told."""
        with self._lock:
            count, self._unlogged = self._unlogged, 0
        if count:
            log.log(self.level, "%d more %s since the last summary", count, self.what)


WAIT_SLICE_S = 1.0  # a worker waiting for its turn looks at the stop flag at least this often
STALLED: Final = "stalled"  # the sender's state while an attempt has gone unanswered too long


class DeliveryState:
    """The delivery gate (:mod:`rudder_fast.gate`) shared by the workers, with their waits; one log line
    per change of state or of the data plane in use (never one per attempt); the last error; and what
    ``status`` and the metrics show. Thread-safe.

    The sender's state is the gate's (``starting``, ``ok``, ``backoff``, ``halted``, ``disabled``), but
    for ``stalled``: while delivery is otherwise ``ok``, an attempt has had no answer for
    ``stalled_after`` seconds (a blackholed path, a data plane that accepts and never answers). The main
    loop checks for it at every turn (:meth:`watch`); ``changes`` counts every change, so that a change
    is published at once rather than with the next second's status.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        concurrency: int,
        policy: RetryPolicy,
        stalled_after: float = config.STALLED_AFTER_S,
        rng: RandomSource | None = None,
    ) -> None:
        self._cond = threading.Condition()
        self.urls = tuple(redact_url(url) for url in urls)
        rng = rng or random.Random()  # noqa: S311 - jitter spreads probes; it guards no secret
        self.gate = Gate(endpoints=len(self.urls), concurrency=concurrency, policy=policy, rng=rng)
        self.stalled_after = stalled_after
        self.since = time.time()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.errors: list[str | None] = [None] * len(self.urls)  # each data plane's last error
        self.changes = 0
        # Failed attempts of batches not resolved yet: the ledger counts a batch's retries once it is
        # resolved, and status and the metrics add these, so that an outage shows while it lasts.
        self._retries_unsettled = 0
        self._stalled = False
        self._shown: tuple[str, int] = (gate.STARTING, 0)  # the state and data plane last told
        self._closed = False

    def __repr__(self) -> str:
        return f"<DeliveryState {self.state} since {self.since:.0f} url={self.url!r}>"

    @property
    def state(self) -> str:
        with self._cond:
            return self._state()

    @property
    def url(self) -> str:
        """The data plane in use (while every one fails: the first, which is probed first)."""
        with self._cond:
            return self.urls[self._in_use_index()]

    # -- the workers' side ---------------------------------------------------------------------------

    def enter(self, stop: threading.Event) -> Permit | None:
        """Wait for the gate's leave to make one attempt; None once the sender stops."""
        with self._cond:
            while not (stop.is_set() or self._closed):
                got = self.gate.acquire(time.monotonic())
                if isinstance(got, Permit):
                    return got
                self._cond.wait(min(got, WAIT_SLICE_S))
        return None

    def answered(self, permit: Permit) -> None:
        """The attempt got an answer with a verdict on its events."""
        with self._cond:
            self.gate.answered(permit, time.monotonic())
            self._cond.notify_all()
            lines = self._observe(time.monotonic())
        _log(lines)

    def failed(self, permit: Permit, decision: Decision, reason: str, kind: ErrorKind | None = None) -> None:
        """The attempt got no answer (``kind`` says why), or a "not now" (``decision`` says which, and the
        least wait)."""
        state = {Action.HALT: gate.HALTED, Action.DISABLED: gate.DISABLED}.get(decision.action, gate.BACKOFF)
        with self._cond:
            self.gate.failed(permit, time.monotonic(), state=state, floor=decision.delay)
            self._retries_unsettled += 1
            self.errors[permit.endpoint] = reason
            several = len(self.urls) > 1
            self.last_error = f"{self.urls[permit.endpoint]}: {reason}" if several else reason
            self.last_error_at = time.time()
            self._cond.notify_all()
            lines = self._observe(time.monotonic(), failed=permit.endpoint, decision=decision, kind=kind)
        _log(lines)

    def retries_settled(self, retried: int) -> None:
        """A batch was resolved: its ``retried`` failed attempts are in the ledger's counters now."""
        with self._cond:
            self._retries_unsettled -= retried

    def retries_unsettled(self) -> int:
        """Failed attempts of the batches still being delivered."""
        with self._cond:
            return self._retries_unsettled

    def release(self, permit: Permit) -> None:
        """The attempt was never made (an unexpected error before it)."""
        with self._cond:
            self.gate.release(permit)
            self._cond.notify_all()

    def close(self) -> None:
        """The sender stops: every waiting worker returns at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the main loop's side ------------------------------------------------------------------------

    def watch(self, now: float) -> None:
        """Notice attempts without an answer for ``stalled_after`` seconds (``now``: monotonic)."""
        with self._cond:
            lines = self._observe(now)
        _log(lines)

    def oldest_request_age(self, now: float) -> float | None:
        """How long the oldest attempt in flight has waited for its answer (None: none in flight)."""
        with self._cond:
            started = self.gate.oldest_started()
        return None if started is None else max(0.0, now - started)

    def requests_in_flight(self) -> int:
        """Attempts posted and not yet answered (the batches waiting for their turn are not)."""
        with self._cond:
            return len(self.gate.inflight)

    def data_planes(self) -> list[dict[str, Any]]:
        """Each data plane: its URL, its state, whether it is the one in use, its last error."""
        with self._cond:
            in_use = self.gate.in_use()
            return [
                {
                    "url": url,
                    "state": endpoint.state,
                    "in_use": endpoint is in_use,
                    "last_error": self.errors[endpoint.index],
                }
                for url, endpoint in zip(self.urls, self.gate.endpoints, strict=True)
            ]

    # -- state changes and what they say -------------------------------------------------------------

    def _in_use_index(self) -> int:
        in_use = self.gate.in_use()
        return 0 if in_use is None else in_use.index

    def _state(self) -> str:
        state = self.gate.state()
        if self._stalled and state in (gate.OK, gate.STARTING):
            return STALLED
        return state

    def _observe(
        self,
        now: float,
        *,
        failed: int | None = None,
        decision: Decision | None = None,
        kind: ErrorKind | None = None,
    ) -> list[tuple[int, str]]:
        """Under the lock: the state now, and the log lines its change from the last one told calls for."""
        started = self.gate.oldest_started()
        self._stalled = started is not None and now - started >= self.stalled_after
        state, in_use = self._state(), self._in_use_index()
        before, was_in_use = self._shown
        if (state, in_use) == (before, was_in_use):
            return []
        self._shown = (state, in_use)
        self.changes += 1
        lines = self._say(before, was_in_use, state, in_use, now - (started or now))
        if not lines and failed is not None and decision is not None and state != before:
            lines = [self._failure_line(state, failed, decision, kind)]
        if state != before:
            self.since = time.time()
        return lines

    def _say(
        self, before: str, was_in_use: int, state: str, in_use: int, waited: float
    ) -> list[tuple[int, str]]:
        """The line for a change that needs no failure to explain it (a failure's: _failure_line)."""
        url, was_url = self.urls[in_use], self.urls[was_in_use]
        lasted = time.time() - self.since
        if state == gate.OK and before == gate.STARTING:
            return [(logging.INFO, f"delivering to {url}")]
        if state == gate.OK and before == gate.OK:  # the data plane in use changed
            if in_use > was_in_use:
                return [(logging.WARNING, f"{was_url} failed ({self.errors[was_in_use]}): delivering to "
                         f"{url} instead; {was_url} is probed until it answers again")]  # fmt: skip
            return [(logging.INFO, f"{url} answers again: delivering to it instead of {was_url}")]
        if state == gate.OK and before == STALLED:
            return [(logging.INFO, f"{url} answers again after a stall of {lasted:.1f} s")]
        if state == gate.OK:
            return [(logging.INFO, f"recovered: delivering to {url} again after {lasted:.1f} s ({before})")]
        if state == STALLED:
            return [(logging.WARNING, f"{url} has not answered for {waited:.1f} s: the network path or the "
                     "data plane is stalled. Events are kept; a request without an answer is given up at "
                     "its deadline (--connect-timeout + --read-timeout) and retried")]  # fmt: skip
        return []

    def _failure_line(
        self, state: str, failed: int, decision: Decision, kind: ErrorKind | None
    ) -> tuple[int, str]:
        url, reason = self.urls[failed], self.errors[failed]
        if state == gate.HALTED:
            return logging.ERROR, (
                f"HALTED: {url} answered {reason}. Check the write key (RUDDER_WRITE_KEY / "
                "--write-key-file). Nothing is sent and nothing is lost: every event stays in the spool; "
                f"retrying every {decision.delay:.0f} s."
            )
        if state == gate.DISABLED:
            return logging.ERROR, (
                f"POST {url} answered {reason}: a wrong path (the data plane URL must be the data plane's "
                f"base URL) or a disabled source. Events are kept; retrying every {decision.delay:.0f} s."
            )
        every = "every data plane fails; " if len(self.urls) > 1 else ""
        if kind is ErrorKind.TLS:
            return logging.ERROR, (
                f"{every}{reason} ({url}). Events are kept; retrying every {decision.delay:.0f} s"
            )
        return logging.WARNING, (
            f"backing off: {every}{reason} ({url}); events are kept, and one request at a time probes "
            "until the data plane answers"
        )


def _log(lines: list[tuple[int, str]]) -> None:
    for level, text in lines:
        log.log(level, "%s", text)


class Quarantine:
    """``rejected/``: events the data plane refused, one JSON line each with its answer. Bounded."""

    def __init__(self, directory: Path, max_bytes: int = config.REJECTED_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.kept = Recurring(logging.WARNING, "events refused by the data plane were kept in rejected/")
        self.full = Recurring(logging.ERROR, "refused events were counted, not kept: rejected/ is full")
        self.splits = Recurring(logging.INFO, "batches split or bisected after a 413 or a 400")

    def put(self, stub: bytes, status: int, answer: str) -> bool:
        """Keep a refused event: True once it is on disk, False if rejected/ is full (it is then only
        counted). Raises OSError if it cannot be written: the caller keeps the event and tries again."""
        line = orjson.dumps(
            {
                "status": status,
                "response": answer,
                "rejected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "event": orjson.Fragment(stub + b"}"),
            }
        )
        with self._lock:
            self.directory.mkdir(mode=0o700, exist_ok=True)  # an operator may have removed it
            path = self.directory / f"rejected-{time.strftime('%Y%m%d', time.gmtime())}.jsonl"
            used = self._used()
            if used + len(line) > self.max_bytes:
                self.full.note(f"{used:,} bytes used")
                return False
            fd = safefile.open_append(path)
            try:
                safefile.write_all(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        self.kept.note(f"{path.name}: HTTP {status} {answer}")
        return True

    def _used(self) -> int:
        used = 0
        for p in self.directory.glob("*.jsonl"):
            try:
                used += p.stat().st_size
            except FileNotFoundError:
                pass
        return used


@dataclass
class Attempt:
    """One request's answer: its HTTP status (None: no answer), the policy's decision, and why it failed
    (for a request without an answer)."""

    status: int | None
    response: Response | None
    decision: Decision
    kind: ErrorKind | None = None


class Deliverer:
    """Delivers one batch following the retry policy, each attempt when the delivery gate allows and to
    the data plane it names. One per worker thread."""

    def __init__(
        self,
        transports: Sequence[Transport],
        policy: RetryPolicy,
        state: DeliveryState,
        stop: threading.Event,
        quarantine: Quarantine,
    ) -> None:
        self.transports = transports  # one per data plane, in the gate's order
        self.policy = policy
        self.state = state
        self.stop = stop
        self.quarantine = quarantine
        self.clock = IsoClock()

    def deliver(self, batch: Batch, outcome: Outcome | None = None) -> Outcome:
        """Until every event of the batch is delivered or quarantined, or the sender stops (then the
        outcome is ``abandoned``: the events are sent again after a restart). ``outcome``: one to add
        to (a batch tried again after an unexpected error keeps the count of its failed attempts)."""
        outcome = Outcome() if outcome is None else outcome
        work: list[range] = [range(len(batch.stubs))]  # ranges of batch.stubs still to send
        while work:
            part = work.pop()
            stubs = batch.stubs[part.start : part.stop]
            while True:
                permit = self.state.enter(self.stop)
                if permit is None:
                    outcome.abandoned = True
                    return outcome
                tried = self._post(stubs, permit)
                action = tried.decision.action
                if action not in ANSWERED:
                    # RETRY, HALT, DISABLED: keep the events; the gate says when to try again, and where.
                    outcome.retried += 1
                    self.state.failed(permit, tried.decision, self._reason(tried), tried.kind)
                    continue
                self.state.answered(permit)  # the server answered with a verdict: it is up
                if action is Action.ACK:
                    outcome.delivered += len(stubs)
                elif action is Action.QUARANTINE:
                    response = tried.response  # (a refusal always comes with the data plane's answer)
                    if response is None or not self._quarantine(stubs[0], response, outcome):
                        outcome.abandoned = True
                        return outcome
                else:  # SPLIT, BISECT
                    first, second = halves(len(part))
                    work.append(range(part.start + second.start, part.start + second.stop))
                    work.append(range(part.start + first.start, part.start + first.stop))
                    self.quarantine.splits.note(f"{tried.decision.reason}, {len(stubs)} events")
                break
        return outcome

    def _post(self, stubs: list[bytes], permit: Permit) -> Attempt:
        transport = self.transports[permit.endpoint]
        response: Response | None = None
        error, kind = "", None
        try:
            response = transport.post(body_pieces(stubs, self.clock.format_ns(time.time_ns())))
            status: int | None = response.status
        except TransportError as exc:
            status, error, kind = None, str(exc), exc.kind
            transport.drop_idle()
        except BaseException:
            self.state.release(permit)  # (Workers keeps the batch and tries it again)
            raise
        decision = self.policy.decide(
            status,
            batch_size=len(stubs),
            retry_after=parse_retry_after(response.retry_after if response else None, time.time()),
            error=error,
            error_kind=kind or ErrorKind.OTHER,
        )
        return Attempt(status, response, decision, kind)

    @staticmethod
    def _reason(tried: Attempt) -> str:
        body = tried.response.body if tried.response is not None else ""
        return tried.decision.reason + (f": {body}" if body else "")

    def _quarantine(self, stub: bytes, response: Response, outcome: Outcome) -> bool:
        """Keep one refused event in rejected/; False if the sender stopped while it could not."""
        while True:
            try:
                kept = self.quarantine.put(stub, response.status, response.body)
                break
            except OSError as exc:
                log.error("cannot write to rejected/ (%s); the event is kept, retrying", exc)
                if self.stop.wait(QUARANTINE_RETRY_S):
                    return False
        outcome.rejected += 1
        if not kept:
            outcome.not_kept += 1
        return True


class Workers:
    """K threads delivering batches; results come back on a queue the main thread drains."""

    def __init__(
        self, count: int, make: Callable[[threading.Event], Deliverer], wake: Callable[[], None]
    ) -> None:
        self.stop = threading.Event()  # set by halt() at shutdown: workers abandon their waits at once
        self._wake = wake  # ends the waits for the delivery gate's leave
        self._work: queue.Queue[Batch | None] = queue.Queue()
        self.results: queue.Queue[tuple[Batch, Outcome]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._count = count
        self._make = make

    def start(self) -> None:
        for i in range(self._count):
            deliverer = self._make(self.stop)
            thread = threading.Thread(
                target=self._loop, args=(deliverer,), name=f"rudder-fast-worker-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def submit(self, batch: Batch) -> None:
        self._work.put(batch)

    def halt(self) -> None:
        """The sender stops: every wait ends now, and no new attempt starts."""
        self.stop.set()
        self._wake()

    def close(self) -> None:
        for _ in self._threads:
            self._work.put(None)

    def _loop(self, deliverer: Deliverer) -> None:
        while True:
            batch = self._work.get()
            if batch is None:
                return
            retried = 0  # failed attempts of earlier tries: every one is counted (DeliveryState.failed)
            while True:
                outcome = Outcome(retried=retried)
                try:
                    deliverer.deliver(batch, outcome)
                    break
                except Exception:  # never lose or strand a batch: keep it, and try it again
                    log.exception("unexpected error delivering a batch; it is kept and retried in 5 s")
                    retried = outcome.retried
                    if self.stop.wait(5.0):
                        outcome = Outcome(abandoned=True, retried=retried)
                        break
            self.results.put((batch, outcome))
