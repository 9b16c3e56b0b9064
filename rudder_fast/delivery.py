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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from . import config, safefile
from .batching import Batch, build_body, halves
from .book import Outcome
from .retry import Action, Decision, RetryPolicy, parse_retry_after
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


class DeliveryState:
    """``starting``, ``ok``, ``backoff``, ``halted`` (401) or ``disabled`` (404); one log line per change."""

    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        self.url = redact_url(url)
        self.state = "starting"
        self.since = time.time()
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def __repr__(self) -> str:
        return f"<DeliveryState {self.state} since {self.since:.0f} url={self.url!r}>"

    def success(self) -> None:
        with self._lock:
            if self.state == "ok":
                return
            if self.state == "starting":
                log.info("delivering to %s", self.url)
            else:
                log.info(
                    "recovered: delivering to %s again after %.1f s (%s)",
                    self.url, time.time() - self.since, self.state,
                )  # fmt: skip
            self.state = "ok"
            self.since = time.time()

    def failure(self, state: str, reason: str, delay: float) -> None:
        with self._lock:
            self.last_error = reason
            self.last_error_at = time.time()
            if self.state == state:
                return
            self.state = state
            self.since = time.time()
        if state == "halted":
            log.error(
                "HALTED: %s answered %s. Check the write key (RUDDER_WRITE_KEY / --write-key-file). "
                "Nothing is sent and nothing is lost: every event stays in the spool; retrying every "
                "%.0f s.", self.url, reason, delay,
            )  # fmt: skip
        elif state == "disabled":
            log.error(
                "POST %s answered %s: a wrong path (the data plane URL must be the data plane's base "
                "URL) or a disabled source. Events are kept; retrying every %.0f s.",
                self.url, reason, delay,
            )  # fmt: skip
        else:
            log.warning("backing off: %s (%s); events are kept and retried", reason, self.url)


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
    """One request's answer: its HTTP status (None: no answer) and the policy's decision."""

    status: int | None
    response: Response | None
    decision: Decision


class Deliverer:
    """Delivers one batch following the retry policy. One per worker thread."""

    def __init__(
        self,
        transport: Transport,
        policy: RetryPolicy,
        state: DeliveryState,
        stop: threading.Event,
        quarantine: Quarantine,
    ) -> None:
        self.transport = transport
        self.policy = policy
        self.state = state
        self.stop = stop
        self.quarantine = quarantine
        self.rng = random.Random()  # noqa: S311 - jitter spreads retries; it guards no secret
        self.clock = IsoClock()

    def deliver(self, batch: Batch) -> Outcome:
        """Until every event of the batch is delivered or quarantined, or the sender stops (then the
        outcome is ``abandoned``: the events are sent again after a restart)."""
        outcome = Outcome()
        work: list[range] = [range(len(batch.stubs))]  # ranges of batch.stubs still to send
        while work:
            part = work.pop()
            stubs = batch.stubs[part.start : part.stop]
            attempt = 0
            while True:
                if self.stop.is_set():
                    outcome.abandoned = True
                    return outcome
                attempt += 1
                tried = self._post(stubs, attempt)
                action = tried.decision.action
                if action is Action.ACK:
                    self.state.success()
                    outcome.delivered += len(stubs)
                    break
                if action in (Action.SPLIT, Action.BISECT):
                    self.state.success()  # the server answered: it is up
                    first, second = halves(len(part))
                    work.append(range(part.start + second.start, part.start + second.stop))
                    work.append(range(part.start + first.start, part.start + first.stop))
                    self.quarantine.splits.note(f"{tried.decision.reason}, {len(stubs)} events")
                    break
                if action is Action.QUARANTINE:
                    self.state.success()
                    response = tried.response  # (a refusal always comes with the data plane's answer)
                    if response is None or not self._quarantine(stubs[0], response, outcome):
                        outcome.abandoned = True
                        return outcome
                    break
                # RETRY, HALT, DISABLED: keep the events, wait, and try the same request again.
                outcome.retried += 1
                if not self._wait_after(tried):
                    outcome.abandoned = True
                    return outcome
        return outcome

    def _post(self, stubs: list[bytes], attempt: int) -> Attempt:
        body = build_body(stubs, self.clock.format_ns(time.time_ns()))
        response: Response | None = None
        error = ""
        try:
            response = self.transport.post(body)
            status: int | None = response.status
        except TransportError as exc:
            status, error = None, str(exc)
        decision = self.policy.decide(
            status,
            attempt=attempt,
            batch_size=len(stubs),
            rng=self.rng,
            retry_after=parse_retry_after(response.retry_after if response else None, time.time()),
            error=error,
        )
        return Attempt(status, response, decision)

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

    def _wait_after(self, tried: Attempt) -> bool:
        """Record a failed attempt and wait as the policy says; False if the sender stopped meanwhile."""
        decision = tried.decision
        body = tried.response.body if tried.response is not None else ""
        reason = decision.reason + (f": {body}" if body else "")
        state = {Action.HALT: "halted", Action.DISABLED: "disabled"}.get(decision.action, "backoff")
        self.state.failure(state, reason, decision.delay)
        return not self.stop.wait(decision.delay)


class Workers:
    """K threads delivering batches; results come back on a queue the main thread drains."""

    def __init__(self, count: int, make: Callable[[threading.Event], Deliverer]) -> None:
        self.stop = threading.Event()  # set at shutdown: workers abandon their waits at once
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

    def close(self) -> None:
        for _ in self._threads:
            self._work.put(None)

    def _loop(self, deliverer: Deliverer) -> None:
        while True:
            batch = self._work.get()
            if batch is None:
                return
            while True:
                try:
                    outcome = deliverer.deliver(batch)
                    break
                except Exception:  # never lose or strand a batch: keep it, and try it again
                    log.exception("unexpected error delivering a batch; it is kept and retried in 5 s")
                    if self.stop.wait(5.0):
                        outcome = Outcome(abandoned=True)
                        break
            self.results.put((batch, outcome))
