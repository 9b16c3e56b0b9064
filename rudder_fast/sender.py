"""``rudder-fast-sender``: tails the spool and delivers it to the data plane, at least once.

How this works
--------------
One main thread reads; K worker threads deliver.

The main thread owns every piece of state. It discovers segments, reads each from its acknowledged
offset, turns event frames into wire events (orjson, once per event) and packs them into batches by
bytes, count and linger time. It hands each full batch to a worker and applies the results the workers
send back. Per segment it keeps the frames it has read as an ordered list of *chunks*, each tied to the
batch that holds its events; a segment's acknowledged offset advances only over a prefix of chunks
whose batches are all resolved (delivered, or quarantined after the server refused them), and the
ledger is committed right after. A crash therefore resends at most the batches in flight, each event
with its original messageId.

A worker owns one batch until it is resolved: it stamps ``sentAt``, gzips and posts it, and follows the
retry policy (back off and retry; split on 413; bisect on 400 and quarantine the refused events; hold
everything on 401/404). Workers never touch the spool or the ledger.

A segment is finished when its writer is gone (its flock is free) or it carries a seal frame, and every
byte has been read; once its offset is acknowledged to the end it is closed, unlinked, then dropped
from the ledger. Memory is bounded: at most K batches in flight, one being built, one waiting, and a
bounded read buffer per segment.
"""

from __future__ import annotations

import argparse
import collections
import errno
import fcntl
import logging
import os
import queue
import resource
import signal
import stat
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack
import orjson

from . import __version__, config, ledger, metrics, quota, safefile
from .batching import (
    BODY_OVERHEAD,
    PER_EVENT_OVERHEAD,
    SERVER_MAX_BODY,
    BatchLimits,
    body_size,
    build_body,
    halves,
)
from .errors import ConfigurationError, SpoolError
from .framing import FRAME_DROPS, FRAME_EVENT, FRAME_SEAL, NEED_DATA, Frame, Skip, decode_drops
from .layout import SpoolPaths, check_private, check_spool_files, ensure_spool, parent_warning
from .retry import Action, RetryPolicy, default_rng, parse_retry_after
from .tail import SegmentTail, count_events, scan_segments, writer_alive
from .transport import Response, Transport, TransportError, redact_url
from .wire import IsoClock, WireMapper

log = logging.getLogger("rudder_fast.sender")

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_LOCKED: Final = 3
EXIT_DRAIN_FAILED: Final = 4

# Defaults and their reasons (each also an option and an environment variable).
DEFAULT_CONCURRENCY: Final = 4  # requests in flight: hides round-trip latency; the gateway scales out
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
DEFAULT_READ_TIMEOUT_S: Final = 30.0  # the gateway's own write timeout is 10 s; leave it room
DEFAULT_STOP_TIMEOUT_S: Final = 5.0  # SIGTERM: wait this long for requests in flight, then abandon them
POLL_MIN_S: Final = 0.005  # idle polling starts fast (new events are found within milliseconds)...
POLL_MAX_S: Final = 0.05  # ...and slows to this when nothing arrives
PROBE_INTERVAL_S: Final = 1.0  # how often an idle live segment's writer lock is probed
READ_CHUNK: Final = 1 << 20  # bytes read from a segment at a time: bounds the per-segment buffer
TMP_MAX_AGE_S: Final = 60.0  # a tmp/ entry this old whose creator is gone is debris: removed
COMMIT_RETRY_S: Final = 1.0  # a failing ledger commit (a full disk) is tried again this often
PRIVACY_CHECK_S: Final = 1.0  # how often the spool's directories are checked to still be private
# How often segments/ is listed (new files, and new bytes in idle ones): often while the spool is small,
# so events are picked up within milliseconds, less often as it grows, so thousands of segments cost
# little (the listing stats each file): 0.05 s + 0.5 ms per segment, at most 1 s.
RESCAN_BASE_S: Final = 0.05
RESCAN_PER_SEGMENT_S: Final = 0.0005
RESCAN_MAX_S: Final = 1.0
REJECTED_MAX_BYTES: Final = 64 * 1024 * 1024  # bound on rejected/; beyond it refused events are counted
STATUS_INTERVAL_S: Final = 1.0
DROP_TOO_LARGE: Final = "too_large"  # an event over the server's limit that could not even be kept
DROP_NOT_KEPT: Final = "rejected_not_kept"  # refused by the server while rejected/ was full
DROPS_QUIET_S: Final = 30.0  # drops are over once none has been reported for this long


@dataclass(frozen=True)
class SenderConfig:
    spool_dir: Path
    write_key: str
    data_plane_url: str
    gzip: bool = True
    limits: BatchLimits = field(default_factory=BatchLimits)
    concurrency: int = DEFAULT_CONCURRENCY
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    stop_timeout: float = DEFAULT_STOP_TIMEOUT_S
    drain: bool = False
    drain_timeout: float | None = None
    ca_bundle: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    quota_bytes: int = 0  # 0: no quota
    on_full: str = "drop"  # or "drop_oldest"
    metrics_host: str = metrics.DEFAULT_HOST
    metrics_port: int | None = None
    metrics_textfile: Path | None = None
    rejected_max_bytes: int = REJECTED_MAX_BYTES

    def __repr__(self) -> str:  # never show the write key
        return (
            f"SenderConfig(spool_dir={str(self.spool_dir)!r}, "
            f"data_plane_url={redact_url(self.data_plane_url)!r}, gzip={self.gzip}, "
            f"concurrency={self.concurrency}, drain={self.drain})"
        )


# -- bookkeeping of what has been read and what is resolved --------------------------------------------


class Chunk:
    """A contiguous range of one segment, ending at ``end``, resolved when ``batch`` is."""

    __slots__ = ("batch", "done", "drops", "end", "events", "rejected", "skipped", "start")

    def __init__(self, batch: Batch | None, start: int, end: int, done: bool = False) -> None:
        self.batch = batch
        self.start = start
        self.end = end
        self.done = done
        self.events = 0
        self.rejected = 0
        self.skipped = 0
        self.drops: dict[str, int] | None = None


class Segment:
    __slots__ = ("acked", "acked_ahead", "chunks", "name", "next_probe", "reread_at", "size", "tail")

    def __init__(
        self, name: str, tail: SegmentTail, acked: int, acked_ahead: list[list[int]] | None = None
    ) -> None:
        self.name = name
        self.tail = tail
        self.acked = acked
        # Ranges past ``acked`` resolved before a restart (a later batch acknowledged while an earlier
        # one was still being retried): their events are not sent again.
        self.acked_ahead: list[list[int]] = acked_ahead or []
        self.chunks: collections.deque[Chunk] = collections.deque()
        self.next_probe = 0.0
        self.size = 1 << 62  # until the first directory scan says otherwise: read
        self.reread_at = -1  # offset of the last suspected corruption re-read from disk

    @property
    def finished(self) -> bool:
        """Everything read and resolved, and the file will not grow again."""
        return self.tail.done and not self.chunks


class Batch:
    __slots__ = ("chunks", "cost", "count", "created", "id", "stub_bytes", "stubs")

    def __init__(self, batch_id: int, created: float) -> None:
        self.id = batch_id
        self.created = created
        self.stubs: list[bytes] = []
        self.stub_bytes = 0
        self.count = 0
        self.cost = 0  # body size minus BODY_OVERHEAD: stubs plus each event's sentAt and comma
        self.chunks: list[tuple[Segment, Chunk]] = []

    def __repr__(self) -> str:
        return f"<Batch id={self.id} events={len(self.stubs)} bytes={self.size}>"

    @property
    def size(self) -> int:
        return body_size(self.stub_bytes, len(self.stubs))


@dataclass
class Result:
    """What a worker reports once a batch is resolved (or abandoned at shutdown)."""

    batch: Batch
    delivered: int = 0
    rejected: int = 0
    not_kept: int = 0  # rejected, and not kept in rejected/ because it was full
    retried: int = 0
    abandoned: bool = False


# -- logging that never repeats per event --------------------------------------------------------------


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


# -- delivery state shared between workers, logged on change only --------------------------------------


class DeliveryState:
    """``ok``, ``backoff``, ``halted`` (401) or ``disabled`` (404); one log line per change."""

    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        self.url = redact_url(url)
        self.state = "starting"
        self.since = time.time()
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def success(self) -> None:
        with self._lock:
            if self.state == "ok":
                return
            if self.state == "starting":
                log.info("delivering to %s", self.url)
            else:
                log.info(
                    "recovered: delivering to %s again after %.1f s (%s)",
                    self.url,
                    time.time() - self.since,
                    self.state,
                )
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
                    "HALTED: %s answered %s. Check the write key (RUDDER_WRITE_KEY / --write-key). "
                    "Nothing is sent and nothing is lost: every event stays in the spool; retrying "
                    "every %.0f s.",
                    self.url,
                    reason,
                    delay,
                )
            elif state == "disabled":
                log.error(
                    "%s answered %s: the source is disabled. Events are kept; retrying every %.0f s.",
                    self.url,
                    reason,
                    delay,
                )
            else:
                log.warning("backing off: %s (%s); events are kept and retried", reason, self.url)


# -- the worker: one batch at a time, until resolved ---------------------------------------------------


class Deliverer:
    """Delivers one batch following the retry policy. Runs in worker threads."""

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
        self.rng = default_rng()
        self.clock = IsoClock()
        self.splits = quarantine.splits

    def deliver(self, batch: Batch) -> Result:
        result = Result(batch)
        # Work list of index ranges into batch.stubs still to send; a 400 or 413 splits a range.
        work: list[range] = [range(len(batch.stubs))]
        while work:
            part = work.pop()
            stubs = batch.stubs[part.start : part.stop]
            attempt = 0
            while True:
                if self.stop.is_set():
                    result.abandoned = True
                    return result
                attempt += 1
                body = build_body(stubs, self.clock.format_ns(time.time_ns()))
                status: int | None
                resp: Response | None = None
                error = ""
                try:
                    resp = self.transport.post(body)
                    status = resp.status
                except TransportError as exc:
                    status, error = None, str(exc)
                decision = self.policy.decide(
                    status,
                    attempt=attempt,
                    batch_size=len(stubs),
                    rng=self.rng,
                    retry_after=parse_retry_after(resp.retry_after if resp else None, time.time()),
                    error=error,
                )
                action = decision.action
                if action is Action.ACK:
                    self.state.success()
                    result.delivered += len(stubs)
                    break
                if action in (Action.SPLIT, Action.BISECT):
                    self.state.success()  # the server answered: it is up
                    first, second = halves(len(part))
                    work.append(range(part.start + second.start, part.start + second.stop))
                    work.append(range(part.start + first.start, part.start + first.stop))
                    self.splits.note(f"{decision.reason}, {len(stubs)} events")
                    break
                if action is Action.QUARANTINE:
                    self.state.success()
                    assert resp is not None
                    while True:
                        try:
                            kept = self.quarantine.put(stubs[0], resp.status, resp.body)
                            break
                        except OSError as exc:
                            log.error("cannot write to rejected/ (%s); the event is kept, retrying", exc)
                            if self.stop.wait(5.0):
                                result.abandoned = True
                                return result
                    result.rejected += 1
                    if not kept:
                        result.not_kept += 1
                    break
                # RETRY, HALT, DISABLED: keep the events, wait, and try the same request again.
                result.retried += 1
                reason = decision.reason + (f": {resp.body}" if resp is not None and resp.body else "")
                state = {Action.HALT: "halted", Action.DISABLED: "disabled"}.get(action, "backoff")
                self.state.failure(state, reason, decision.delay)
                if self.stop.wait(decision.delay):
                    result.abandoned = True
                    return result
        return result


class Quarantine:
    """``rejected/``: events the data plane refused, one JSON line each with its answer. Bounded."""

    def __init__(self, directory: Path, max_bytes: int = REJECTED_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.overflow = 0
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
            used = 0
            for p in self.directory.glob("*.jsonl"):
                try:
                    used += p.stat().st_size
                except FileNotFoundError:
                    pass
            if used + len(line) > self.max_bytes:
                self.overflow += 1
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


# -- the main loop ---------------------------------------------------------------------------------------


class Sender:
    def __init__(self, cfg: SenderConfig) -> None:
        self.cfg = cfg
        self.paths: SpoolPaths = ensure_spool(cfg.spool_dir)
        check_spool_files(self.paths)
        warning = parent_warning(self.paths.root)
        if warning:
            log.warning("%s", warning)
        self.stop = threading.Event()
        self.state = DeliveryState(cfg.data_plane_url)
        # Published in status so that an app can tell whether it was given the same key (never the key).
        self._key_fingerprint = config.write_key_fingerprint(cfg.write_key)
        self.transport = Transport(
            cfg.data_plane_url,
            cfg.write_key,
            gzip=cfg.gzip,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            pool_size=cfg.concurrency,
            ca_bundle=cfg.ca_bundle,
            user_agent=f"rudder-fast/{__version__}",
        )
        self.quarantine = Quarantine(self.paths.rejected, cfg.rejected_max_bytes)
        self.mapper = WireMapper(__version__)
        self.ledger = ledger.LedgerState()
        self.segments: dict[str, Segment] = {}
        self.batch: Batch | None = None
        self.ready: Batch | None = None
        self.inflight = 0
        self._next_batch_id = 0
        self._work: queue.Queue[Batch | None] = queue.Queue()
        self._results: queue.Queue[Result] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._lock_fd = -1
        self._dirty = False
        self._next_rescan = 0.0
        self._next_status = 0.0
        self._started = time.monotonic()
        self._sent_window: collections.deque[tuple[float, int]] = collections.deque()
        self._next_tmp_sweep = 0.0
        self._next_privacy_check = 0.0
        self._commit_retry_at = 0.0
        self.commit_failures = Recurring(logging.ERROR, "ledger commits failed; retried every second")
        self.unreadable = Recurring(
            logging.WARNING, "unreadable records were skipped (counted as skipped bytes)"
        )
        self.too_large = Recurring(
            logging.ERROR, "events too large to send were counted, not kept in rejected/"
        )
        self.oldest_deleted = Recurring(
            logging.WARNING, "times the oldest events were deleted over the quota"
        )
        self._unsafe = False  # the spool stopped being private: write nothing more into it
        self._signalled = False
        self._drops_seen = -1  # set from the ledger at start: only new drops are announced
        self._dropping_since: float | None = None
        self._last_drop_at = 0.0
        self._metrics: metrics.MetricsSnapshot | None = None
        self.control: quota.ControlFile | None = None
        self.usage_bytes = 0
        self._rotate_until = 0.0

    def __repr__(self) -> str:
        return (
            f"<Sender inflight={self.inflight} segments={len(self.segments)} "
            f"state={self.state.state} sent={self.ledger.counters.sent}>"
        )

    # lifecycle

    def acquire_lock(self) -> bool:
        """Take the spool's sender lock; False if another sender holds it.

        Producers and ``status`` probe this lock (a shared lock held for microseconds) to learn whether
        a sender runs, so a refusal is only believed once it has lasted a second.
        """
        fd = safefile.open_regular(self.paths.sender_lock, os.O_RDWR | os.O_CREAT)
        deadline = time.monotonic() + 1.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    os.close(fd)
                    return False
                time.sleep(0.02)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # for people; the lock is what counts
        except OSError:
            pass  # a full disk: the sender is exactly what frees it, so carry on
        self._lock_fd = fd
        return True

    def open_spool(self) -> None:
        """Load the ledger and create the control file (after the lock is held). Raises OSError
        (``safefile.NotRegularFile``) when a spool file's name holds a FIFO, directory or symlink."""
        self.ledger = ledger.load(self.paths.ledger)
        try:
            self.control = quota.ControlFile(self.paths.control)
        except safefile.NotRegularFile:
            raise
        except OSError as exc:
            log.error("cannot create the control file (%s): producers will measure the quota themselves", exc)

    def run(self) -> int:
        self._drops_seen = sum(self.ledger.counters.dropped.values())
        for i in range(self.cfg.concurrency):
            deliverer = Deliverer(self.transport, self.cfg.retry, self.state, self.stop, self.quarantine)
            t = threading.Thread(
                target=self._worker, args=(deliverer,), name=f"rudder-fast-worker-{i}", daemon=True
            )
            t.start()
            self._workers.append(t)
        log.info(
            "sender started: spool %s, data plane %s, gzip %s, %d in flight, batches <= %d bytes",
            self.paths.root,
            redact_url(self.transport.url),
            "on" if self.cfg.gzip else "off",
            self.cfg.concurrency,
            self.cfg.limits.max_bytes,
        )
        deadline = (
            time.monotonic() + self.cfg.drain_timeout
            if self.cfg.drain and self.cfg.drain_timeout is not None
            else None
        )
        code = EXIT_OK
        idle_sleep = POLL_MIN_S
        try:
            while not self.stop.is_set():
                if self._signalled:
                    if self.cfg.drain and not self._drained():
                        log.warning("drain interrupted by a signal with events still pending")
                        code = EXIT_DRAIN_FAILED
                    break
                now = time.monotonic()
                got = self._collect_results(block_for=0.0)
                # A batch parked while K were in flight must go as soon as a worker is free, even when
                # nothing is left to read (the pump, which also submits it, skips finished segments).
                self._submit_ready()
                if now >= self._next_rescan:
                    self._rescan()
                    self._next_rescan = now + min(
                        RESCAN_MAX_S, RESCAN_BASE_S + RESCAN_PER_SEGMENT_S * len(self.segments)
                    )
                if now >= self._next_tmp_sweep:
                    self._next_tmp_sweep = now + 30.0
                    self._sweep_tmp()
                if now >= self._next_privacy_check:
                    self._next_privacy_check = now + PRIVACY_CHECK_S
                    try:
                        check_private(self.paths)
                    except (SpoolError, OSError) as exc:
                        log.error("stopping: %s. Nothing more is written to the spool.", exc)
                        self._unsafe = True
                        code = EXIT_USAGE
                        break
                progressed = self._pump(now)
                self._flush_due(now, caught_up=not progressed)
                self._reap_finished()
                self._commit_if_dirty()
                self._write_status_if_due(now)
                if self.cfg.drain:
                    if self.state.state in ("halted", "disabled"):
                        log.error(
                            "drain stopped: the data plane %s",
                            "refused the write key (401)"
                            if self.state.state == "halted"
                            else "says the source is disabled (404)",
                        )
                        code = EXIT_DRAIN_FAILED
                        break
                    if not progressed and self._drained():
                        log.info("drain complete: every event delivered or quarantined")
                        break
                    if deadline is not None and now > deadline:
                        log.error("drain timed out after %.1f s with events pending", self.cfg.drain_timeout)
                        code = EXIT_DRAIN_FAILED
                        break
                if progressed or got:
                    idle_sleep = POLL_MIN_S
                    continue
                self._collect_results(block_for=idle_sleep)
                idle_sleep = min(POLL_MAX_S, idle_sleep * 2)
        finally:
            self._shutdown()
        return code

    def request_stop(self, *_: Any) -> None:
        """The signal handler: only sets a flag (the main loop sets the Event: a handler that took the
        Event's lock while the interrupted main thread held it would deadlock)."""
        self._signalled = True

    def _shutdown(self) -> None:
        self.stop.set()  # workers abandon backoff waits at once
        deadline = time.monotonic() + self.cfg.stop_timeout
        while self.inflight and time.monotonic() < deadline:
            self._collect_results(block_for=0.05)
        if self.inflight:
            log.warning(
                "%d request(s) still in flight at shutdown: their events stay pending and will be "
                "resent (same messageIds)",
                self.inflight,
            )
        if not self._unsafe:
            self._reap_finished()
            self._commit_retry_at = 0.0  # a last try, whatever the back-off
            self._commit_if_dirty()
        for recurring in (
            self.quarantine.kept, self.quarantine.full, self.quarantine.splits, self.commit_failures,
            self.unreadable, self.too_large, self.oldest_deleted,
        ):  # fmt: skip
            recurring.flush()
            self._write_status(final=True)
        for _ in self._workers:
            self._work.put(None)
        for seg in self.segments.values():
            seg.tail.close()
        self.transport.close()
        if self.control is not None:
            self.control.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _worker(self, deliverer: Deliverer) -> None:
        while True:
            batch = self._work.get()
            if batch is None:
                return
            while True:
                try:
                    result = deliverer.deliver(batch)
                    break
                except Exception:  # never lose or strand a batch: keep it, and try it again
                    log.exception("unexpected error delivering a batch; it is kept and retried in 5 s")
                    if self.stop.wait(5.0):
                        result = Result(batch, abandoned=True)
                        break
            self._results.put(result)

    # discovery and reading

    def _rescan(self) -> None:
        present = set()
        usage = 0
        for path, size in scan_segments(self.paths.segments):
            name = path.name
            present.add(name)
            seg = self.segments.get(name)
            if seg is None:
                tail = SegmentTail.open(path, self.ledger.offsets.get(name, 0))
                if tail is None:
                    continue
                seg = self.segments[name] = Segment(
                    name, tail, tail.decoder.offset, self.ledger.ahead.get(name)
                )
            seg.size = max(size, seg.tail.read_pos)
            usage += max(0, size - seg.acked)
        for name in list(self.ledger.offsets):
            if name not in present and name not in self.segments:
                del self.ledger.offsets[name]  # deleted before the last commit recorded it
                self._dirty = True
        self.usage_bytes = usage
        if self.control is not None:
            self._enforce_quota(usage)

    def _sweep_tmp(self) -> None:
        """Remove segments a producer died creating (between open in tmp/ and rename): old and unlocked."""
        cutoff = time.time() - TMP_MAX_AGE_S
        try:
            entries = list(os.scandir(self.paths.tmp))
        except OSError:
            return
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_mtime > cutoff or not stat.S_ISREG(st.st_mode):
                    continue  # (only producers' files are swept; anything else is left alone)
                fd = safefile.open_regular(Path(entry.path), os.O_RDONLY)
            except OSError:
                continue
            try:
                if writer_alive(fd):
                    continue
                os.unlink(entry.path)
                log.info("removed debris %s from tmp/ (its creator died before finishing it)", entry.name)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _enforce_quota(self, usage: int) -> None:
        """Publish the quota verdict for producers (``drop``), or make room (``drop_oldest``)."""
        assert self.control is not None
        cfg = self.cfg
        now = time.monotonic()
        current = self.control.current
        flags = current.flags
        gen = current.rotate_gen
        if cfg.quota_bytes and cfg.on_full == "drop_oldest":
            flags |= quota.DROP_OLDEST
            if usage >= cfg.quota_bytes:
                usage = self._drop_oldest(usage, int(cfg.quota_bytes * quota.RESUME_FRACTION))
                if usage >= cfg.quota_bytes and not flags & quota.ROTATE:
                    flags |= quota.ROTATE  # live producers: seal your segments so they can go
                    gen += 1
                    self._rotate_until = now + 1.0
            if flags & quota.ROTATE and now >= self._rotate_until:
                flags &= ~quota.ROTATE
        else:
            was_over = bool(flags & quota.OVER_QUOTA)
            over = quota.next_flags(was_over, usage, cfg.quota_bytes)
            if over != was_over:
                if over:
                    log.warning(
                        "spool over quota (%d of %d bytes): producers drop new events until it falls "
                        "below %d%%",
                        usage,
                        cfg.quota_bytes,
                        int(quota.RESUME_FRACTION * 100),
                    )
                else:
                    log.warning("spool back under quota (%d of %d bytes): producers write again", usage,
                                cfg.quota_bytes)  # fmt: skip
            flags = (flags | quota.OVER_QUOTA) if over else (flags & ~quota.OVER_QUOTA)
        self.control.publish(
            quota.Control(
                flags=flags,
                rotate_gen=gen,
                quota_bytes=cfg.quota_bytes,
                usage_bytes=usage,
                updated_ns=time.time_ns(),  # at every scan: producers take a stale one as a frozen sender
                sender_pid=os.getpid(),
            )
        )

    def _drop_oldest(self, usage: int, target: int) -> int:
        """Delete the oldest finished segments not being delivered until usage <= target; count losses."""
        lost = 0
        for name, seg in list(self.segments.items()):
            if usage <= target:
                break
            tail = seg.tail
            if seg.chunks or self._in_open_batch(seg):
                continue  # part of it is being delivered: keep it
            if not (tail.final or tail.sealed or not writer_alive(tail.fd)):
                continue  # its writer may still append
            try:
                size = tail.size()
            except OSError:
                continue
            events, drops = count_events(tail, seg.acked, seg.acked_ahead)
            tail.unlink()
            del self.segments[name]
            self.ledger.offsets.pop(name, None)
            counters = self.ledger.counters
            counters.add_drops(drops)
            counters.add_drops({metrics.DROP_OLDEST: events})
            lost += events
            usage -= max(0, size - seg.acked)
            self._dirty = True
        if lost:
            self.oldest_deleted.note(f"{lost} events in the last deletion")
        return usage

    def _in_open_batch(self, seg: Segment) -> bool:
        return seg.tail.decoder.offset != seg.acked

    def _pump(self, now: float) -> bool:
        """Read and batch whatever is available, as far as the in-flight bound allows."""
        progressed = False
        for seg in list(self.segments.values()):
            tail = seg.tail
            if tail.done:
                continue
            while True:
                if self.ready is not None and not self._submit_ready():
                    return progressed  # K batches in flight and one waiting: read no further
                if not tail.foreign and self._consume_frames(seg):
                    progressed = True
                    continue
                got = self._read(seg, now)
                if got:
                    progressed = True
                    continue
                if tail.final:
                    if not tail.foreign and tail.decoder.buffered:
                        continue  # final now: the decoder turns the rest into frames and torn skips
                    for leftover in tail.frames():  # a foreign file: one skip, never buffered
                        self._account(seg, leftover)
                        progressed = True
                break
        return progressed

    def _consume_frames(self, seg: Segment) -> bool:
        """Decode buffered frames of one segment into the open batch, until it needs more data or the
        batch pipeline is full. The hot loop of the sender: event frames are handled inline."""
        decoder = seg.tail.decoder
        nonce = seg.tail.nonce
        to_event = self.mapper.event
        unpackb = msgpack.unpackb
        dumps = orjson.dumps
        limits = self.cfg.limits
        max_events = limits.max_events
        max_bytes = limits.max_bytes - BODY_OVERHEAD
        chunks = seg.chunks
        consumed = False
        while True:
            item = decoder.next()
            if item is NEED_DATA:
                return consumed
            consumed = True
            if type(item) is Skip and not seg.tail.writer_gone and seg.reread_at != item.offset:
                # Corruption in a file whose writer is alive is most likely a race, not damage: the
                # writer rolled back a short write (ftruncate) and wrote again where this reader had
                # already buffered the old bytes. Re-read from the disk once before believing it.
                seg.reread_at = item.offset
                seg.tail.rewind(item.offset)
                seg.size = max(seg.size, item.offset + 1)
                return consumed
            if seg.acked_ahead and self._acked_before_restart(seg, item):  # type: ignore[arg-type]
                continue
            if type(item) is not Frame or item.type != FRAME_EVENT:
                self._account(seg, item)  # type: ignore[arg-type]
            else:
                try:
                    stub = dumps(to_event(unpackb(item.payload), nonce, item.seq))[:-1]
                except Exception as exc:  # a CRC-valid frame this version cannot read
                    self.unreadable.note(f"{seg.name}:{item.offset}: {exc}")
                    self._mark_resolved(seg, item.end, skipped=item.end - item.offset)
                    continue
                batch = self.batch
                cost = len(stub) + PER_EVENT_OVERHEAD
                if batch is None or batch.count >= max_events or batch.cost + cost > max_bytes:
                    self._add_to_batch(seg, item.end, stub)
                else:
                    batch.stubs.append(stub)
                    batch.count += 1
                    batch.cost += cost
                    batch.stub_bytes += len(stub)
                    if chunks and chunks[-1].batch is batch:
                        chunk = chunks[-1]
                        chunk.end = item.end
                    else:
                        chunk = Chunk(batch, chunks[-1].end if chunks else seg.acked, item.end)
                        chunks.append(chunk)
                        batch.chunks.append((seg, chunk))
                    chunk.events += 1
            if self.ready is not None and not self._submit_ready():
                return consumed

    def _acked_before_restart(self, seg: Segment, item: Frame | Skip) -> bool:
        """Resolve, without sending, an item inside a range the ledger recorded as already resolved."""
        ranges = seg.acked_ahead
        start = item.offset
        end = item.end if isinstance(item, Frame) else item.offset + item.length
        while ranges and start >= ranges[0][1]:
            ranges.pop(0)
        if not ranges or not (ranges[0][0] <= start and end <= ranges[0][1]):
            return False
        if isinstance(item, Skip):
            self._mark_resolved(seg, end, skipped=item.length, already_done=True)
        elif item.type == FRAME_DROPS:
            self._mark_resolved(seg, end, drops=decode_drops(item.payload), already_done=True)
        else:
            if item.type == FRAME_SEAL:
                seg.tail.sealed = True
            # An event delivered before the restart (counted as sent then, credited to its producer now).
            self._mark_resolved(seg, end, events=int(item.type == FRAME_EVENT), already_done=True)
        return True

    def _resolved_ahead(self) -> dict[str, list[list[int]]]:
        """Per segment, the resolved ranges beyond its acknowledged offset (behind a batch still in
        flight), merged. Recorded in the ledger so that a crash resends only what was in flight."""
        ahead: dict[str, list[list[int]]] = {}
        for name, seg in self.segments.items():
            ranges: list[list[int]] = []
            for chunk in seg.chunks:
                if not chunk.done:
                    continue
                if ranges and ranges[-1][1] == chunk.start:
                    ranges[-1][1] = chunk.end
                else:
                    ranges.append([chunk.start, chunk.end])
            for r in seg.acked_ahead:  # from before a restart, not yet reached again
                ranges.append(list(r))
            if ranges:
                ahead[name] = sorted(ranges)
        return ahead

    def _read(self, seg: Segment, now: float) -> int:
        """New bytes of a segment into its decoder. An idle segment costs no syscall between directory
        scans (which refresh ``seg.size``) and liveness probes: thousands of idle producers stay cheap."""
        tail = seg.tail
        if tail.read_pos < seg.size:
            try:
                data = os.pread(tail.fd, READ_CHUNK, tail.read_pos)
            except OSError:
                data = b""
            if data:
                tail.read_pos += len(data)
                tail.decoder.feed(data)
                if len(data) == READ_CHUNK:
                    seg.size = max(seg.size, tail.read_pos + 1)  # probably more: keep reading
                return len(data)
            seg.size = tail.read_pos
        if tail.sealed or now >= seg.next_probe:
            seg.next_probe = now + PROBE_INTERVAL_S
            return tail.read_more()  # probes the writer's lock; marks the tail final when it is gone
        return 0

    def _account(self, seg: Segment, item: Frame | Skip) -> None:
        if isinstance(item, Skip):
            self._mark_resolved(seg, item.offset + item.length, skipped=item.length)
            return
        if item.type == FRAME_EVENT:
            stub = self._encode(seg, item)
            if stub is None:
                self._mark_resolved(seg, item.end, skipped=item.end - item.offset)
                return
            self._add_to_batch(seg, item.end, stub)
        elif item.type == FRAME_DROPS:
            drops = decode_drops(item.payload)
            self._mark_resolved(seg, item.end, drops=drops)
        else:  # FRAME_SEAL (and any frame type this version does not use)
            if item.type == FRAME_SEAL:
                seg.tail.sealed = True
            self._mark_resolved(seg, item.end)

    def _encode(self, seg: Segment, frame: Frame) -> bytes | None:
        try:
            record = msgpack.unpackb(frame.payload)
            event = self.mapper.event(record, seg.tail.nonce, frame.seq)
            return orjson.dumps(event)[:-1]
        except Exception as exc:  # a CRC-valid frame this version cannot read: count its bytes
            self.unreadable.note(f"{seg.name}:{frame.offset}: {exc}")
            return None

    def _add_to_batch(self, seg: Segment, end: int, stub: bytes) -> None:
        limits = self.cfg.limits
        if body_size(len(stub), 1) > SERVER_MAX_BODY:
            try:
                kept = self.quarantine.put(stub, 413, "event larger than the data plane's request size limit")
            except OSError as exc:
                self.too_large.note(str(exc))
                self._mark_resolved(seg, end, drops={DROP_TOO_LARGE: 1})
                return
            self._mark_resolved(seg, end, rejected=1, drops=None if kept else {DROP_NOT_KEPT: 1})
            return
        batch = self.batch
        if batch is not None and (
            len(batch.stubs) >= limits.max_events
            or body_size(batch.stub_bytes + len(stub), len(batch.stubs) + 1) > limits.max_bytes
        ):
            self._close_batch()
            batch = None
        if batch is None:
            batch = self.batch = Batch(self._next_batch_id, time.monotonic())
            self._next_batch_id += 1
        batch.stubs.append(stub)
        batch.stub_bytes += len(stub)
        batch.count += 1
        batch.cost += len(stub) + PER_EVENT_OVERHEAD
        chunks = seg.chunks
        if chunks and chunks[-1].batch is batch:
            chunk = chunks[-1]
            chunk.end = end
        else:
            chunk = Chunk(batch, chunks[-1].end if chunks else seg.acked, end)
            chunks.append(chunk)
            batch.chunks.append((seg, chunk))
        chunk.events += 1

    def _mark_resolved(
        self,
        seg: Segment,
        end: int,
        *,
        skipped: int = 0,
        drops: dict[str, int] | None = None,
        rejected: int = 0,
        events: int = 0,
        already_done: bool = False,
    ) -> None:
        """Bytes up to ``end`` that need no delivery: resolved with the chunk before them, if any (or,
        ``already_done``, as a resolved chunk of their own, so the ledger keeps recording them as such)."""
        chunks = seg.chunks
        if chunks and (chunks[-1].done or not already_done):
            chunk = chunks[-1]  # a pending chunk resolves these bytes with it; a resolved one absorbs them
        elif chunks:
            chunk = Chunk(None, chunks[-1].end, end, done=True)
            chunks.append(chunk)
        else:
            seg.acked = end
            c = self.ledger.counters
            c.skipped_bytes += skipped
            c.rejected += rejected
            if drops:
                c.add_drops(drops)
            self._credit_producer(seg, events, skipped, drops)
            self.ledger.offsets[seg.name] = end
            self._dirty = True
            return
        chunk.end = end
        chunk.skipped += skipped
        chunk.rejected += rejected
        chunk.events += events
        if drops:
            if chunk.drops is None:
                chunk.drops = {}
            for k, v in drops.items():
                chunk.drops[k] = chunk.drops.get(k, 0) + v

    def _close_batch(self) -> None:
        """The open batch is complete: hand it to a worker, or park it as the one waiting batch."""
        batch = self.batch
        if batch is None:
            return
        self.batch = None
        assert self.ready is None
        self.ready = batch
        self._submit_ready()

    def _submit_ready(self) -> bool:
        if self.ready is None:
            return True
        if self.inflight >= self.cfg.concurrency:
            return False
        self._work.put(self.ready)
        self.inflight += 1
        self.ready = None
        return True

    def _flush_due(self, now: float, caught_up: bool) -> None:
        batch = self.batch
        if batch is None or self.ready is not None:
            return
        if now - batch.created >= self.cfg.limits.linger_s or (caught_up and self.cfg.drain):
            self._close_batch()

    # results, acknowledgement and clean-up

    def _collect_results(self, block_for: float) -> int:
        n = 0
        try:
            result = self._results.get(timeout=block_for) if block_for > 0 else self._results.get_nowait()
        except queue.Empty:
            return 0
        while True:
            self._apply(result)
            n += 1
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return n

    def _apply(self, result: Result) -> None:
        self.inflight -= 1
        counters = self.ledger.counters
        counters.retried += result.retried
        if result.abandoned:
            return  # its chunks stay unresolved: the events are resent after a restart
        counters.sent += result.delivered
        counters.rejected += result.rejected
        if result.not_kept:
            counters.add_drops({DROP_NOT_KEPT: result.not_kept})
        self._sent_window.append((time.monotonic(), result.delivered))
        touched = []
        batch = result.batch
        for seg, chunk in batch.chunks:
            chunk.done = True
            chunk.batch = None
            touched.append(seg)
        batch.chunks = []  # break the batch <-> chunk cycle so the memory is freed at once
        batch.stubs = []
        for seg in touched:
            chunks = seg.chunks
            while chunks and chunks[0].done:
                chunk = chunks.popleft()
                seg.acked = chunk.end
                counters.skipped_bytes += chunk.skipped
                counters.rejected += chunk.rejected
                if chunk.drops:
                    counters.add_drops(chunk.drops)
                self._credit_producer(seg, chunk.events, chunk.skipped, chunk.drops)
            self.ledger.offsets[seg.name] = seg.acked
        self._dirty = True

    def _credit_producer(self, seg: Segment, events: int, skipped: int, drops: dict[str, int] | None) -> None:
        """Per-producer counters (a producer is a process: one nonce), kept with the ledger."""
        if not (events or skipped or drops):
            return
        header = seg.tail.header
        self.ledger.credit_producer(
            seg.tail.nonce, header.pid if header else 0, events, skipped, drops, time.time()
        )

    def _reap_finished(self) -> None:
        for name, seg in list(self.segments.items()):
            if not seg.finished:
                continue
            seg.tail.unlink()
            del self.segments[name]
            self.ledger.offsets.pop(name, None)
            self._dirty = True

    def _commit_if_dirty(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self._dirty or now < self._commit_retry_at:
            return
        self._dirty = False
        self.ledger.ahead = self._resolved_ahead()
        try:
            ledger.commit(self.paths.ledger, self.ledger)
        except OSError as exc:
            # A full or failing disk: try again in a second (each try is an fsync), and say so once a
            # minute, not at every turn of the loop.
            self._dirty = True
            self._commit_retry_at = now + COMMIT_RETRY_S
            self.commit_failures.note(str(exc))
            return
        if self._commit_retry_at:
            self._commit_retry_at = 0.0
            log.warning(
                "the ledger is committed again (after %d failed attempts)", self.commit_failures.total
            )

    def _drained(self) -> bool:
        if self.inflight or self.batch is not None or self.ready is not None:
            return False
        self._rescan()
        for seg in self.segments.values():
            tail = seg.tail
            if seg.chunks:
                return False
            try:
                size = tail.size()
            except OSError:
                continue
            if tail.read_pos < size:
                return False
            if tail.decoder.buffered and (tail.final or not writer_alive(tail.fd)):
                return False
        return True

    # status

    def metrics_bytes(self) -> bytes:
        """The Prometheus exposition of the last published snapshot (called on the server's thread)."""
        snap = self._metrics
        if snap is None:
            raise metrics.MetricsUnavailable("the sender has not published its counters yet")
        return metrics.render(snap)

    def _write_status_if_due(self, now: float) -> None:
        if now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL_S
            self._watch_drops(now)
            self._write_status()

    def _watch_drops(self, now: float) -> None:
        """One warning when producers start dropping events, one when they stop: never one per event."""
        total = sum(self.ledger.counters.dropped.values())
        if total > self._drops_seen:
            if self._dropping_since is None:
                log.warning(
                    "producers are dropping events: %s so far (see `rudder-fast status`)",
                    dict(self.ledger.counters.dropped),
                )
                self._dropping_since = now
            self._drops_seen = total
            self._last_drop_at = now
        elif self._dropping_since is not None and now - self._last_drop_at >= DROPS_QUIET_S:
            log.warning(
                "producers stopped dropping events; dropped in total: %s", dict(self.ledger.counters.dropped)
            )
            self._dropping_since = None

    def _write_status(self, final: bool = False) -> None:
        now = time.monotonic()
        window = self._sent_window
        while window and window[0][0] < now - 60:
            window.popleft()
        span = min(60.0, max(1e-3, now - self._started))
        events_per_s = sum(n for _, n in window) / span
        status = {
            "pid": os.getpid(),
            "state": "stopped" if final else self.state.state,
            "state_since": self.state.since,
            "data_plane_url": redact_url(self.transport.url),
            "write_key_fingerprint": self._key_fingerprint,
            "updated_at": time.time(),
            "events_per_s": events_per_s,
            "inflight": self.inflight,
            "counters": self.ledger.counters.to_json(),
            "last_error": self.state.last_error,
            "last_error_at": self.state.last_error_at,
        }
        c = self.ledger.counters
        snap = metrics.MetricsSnapshot(
            version=__version__,
            state=self.state.state if self.state.state in metrics.SENDER_STATES else "starting",
            events_sent=c.sent,
            request_retries=c.retried,
            events_rejected=c.rejected,
            skipped_bytes=c.skipped_bytes,
            dropped=c.dropped,
            requests_in_flight=self.inflight,
            delivery_rate=events_per_s,
            backlog_bytes=self.usage_bytes,
            backlog_segments=len(self.segments),
            live_producers=sum(1 for s in self.segments.values() if not s.tail.final),
            up=not final,
        )
        self._metrics = snap
        if self.cfg.metrics_textfile is not None:
            try:
                metrics.write_textfile(self.cfg.metrics_textfile, metrics.render(snap))
            except OSError as exc:
                log.debug("cannot write the metrics textfile: %s", exc)
        try:
            safefile.replace(self.paths.status, orjson.dumps(status), durable=False)
        except OSError as exc:
            log.debug("cannot write status: %s", exc)


# -- command line ---------------------------------------------------------------------------------------


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def _float_option(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rudder-fast-sender",
        description="Deliver a rudder_fast spool to a RudderStack data plane, at least once.",
    )
    p.add_argument("--spool-dir", help="the spool to ship [$RUDDER_FAST_SPOOL_DIR]")
    p.add_argument(
        "--write-key",
        help="the source's write key [$RUDDER_WRITE_KEY]. A command-line argument is visible to every "
        "user of the host (ps, /proc): prefer the environment variable or --write-key-file",
    )
    p.add_argument(
        "--write-key-file",
        help="read the write key from this file (e.g. a mounted secret) [$RUDDER_WRITE_KEY_FILE]",
    )
    p.add_argument(
        "--data-plane-url", help="data plane URL, with or without /v1/batch [$RUDDER_DATA_PLANE_URL]"
    )
    p.add_argument("--drain", action="store_true", help="deliver everything present, then exit")
    p.add_argument("--drain-timeout", type=float, default=None, help="give up draining after SECONDS")
    p.add_argument("--no-gzip", action="store_true", help="send uncompressed bodies [$RUDDER_FAST_NO_GZIP]")
    p.add_argument("--max-batch-bytes", type=int, help="[$RUDDER_FAST_MAX_BATCH_BYTES] default 1000000")
    p.add_argument("--max-batch-events", type=int, help="[$RUDDER_FAST_MAX_BATCH_EVENTS] default 10000")
    p.add_argument("--linger", type=float, help="seconds a partial batch waits [$RUDDER_FAST_LINGER] 0.2")
    p.add_argument("--concurrency", type=int, help="requests in flight [$RUDDER_FAST_CONCURRENCY] 4")
    p.add_argument("--connect-timeout", type=float, help="[$RUDDER_FAST_CONNECT_TIMEOUT] default 5")
    p.add_argument("--read-timeout", type=float, help="[$RUDDER_FAST_READ_TIMEOUT] default 30")
    p.add_argument("--ca-bundle", help="CA certificates for an https data plane [$RUDDER_FAST_CA_BUNDLE]")
    p.add_argument(
        "--quota-bytes",
        help="bound on unacknowledged spool bytes, e.g. 512M (K/M/G = x1024) [$RUDDER_FAST_QUOTA_BYTES] none",
    )
    p.add_argument(
        "--on-full",
        choices=("drop", "drop_oldest"),
        help="at the quota: producers drop new events, or the sender deletes the oldest "
        "[$RUDDER_FAST_ON_FULL] drop",
    )
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics here [$RUDDER_FAST_METRICS_PORT]"
    )
    p.add_argument("--metrics-host", help="address for --metrics-port [$RUDDER_FAST_METRICS_HOST] 127.0.0.1")
    p.add_argument(
        "--metrics-textfile",
        help="write metrics to this file for node-exporter [$RUDDER_FAST_METRICS_TEXTFILE]",
    )
    p.add_argument(
        "--rejected-max-bytes",
        help="bound on rejected/; refused events beyond it are counted, not kept "
        "[$RUDDER_FAST_REJECTED_MAX_BYTES] 64M",
    )
    p.add_argument(
        "--allow-network-fs",
        action="store_true",
        help="use a spool on NFS/CIFS/... anyway (unsafe: flock and appends are unreliable there) "
        "[$RUDDER_FAST_ALLOW_NETWORK_FS]",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR [$RUDDER_FAST_LOG_LEVEL] INFO")
    return p


def read_write_key_file(path: Path) -> str:
    """The write key kept in a file: its first line, stripped. Refused if others may write it; a warning
    if others may read it."""
    try:
        st = os.stat(path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the write key file {path}: {exc}") from None
    if st.st_mode & 0o022:
        raise ConfigurationError(f"the write key file {path} is writable by others: `chmod 600 {path}`")
    if st.st_mode & 0o004:
        log.warning("the write key file %s is readable by every user: `chmod 600 %s`", path, path)
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise ConfigurationError(f"the write key file {path} is empty")
    return key


def config_from_args(args: argparse.Namespace) -> SenderConfig:
    """Options win over environment variables, which win over the defaults."""
    write_key = args.write_key or _env("RUDDER_WRITE_KEY")
    key_file = args.write_key_file or _env("RUDDER_WRITE_KEY_FILE")
    if not write_key and key_file:
        write_key = read_write_key_file(Path(key_file))
    url = args.data_plane_url or _env("RUDDER_DATA_PLANE_URL")
    if not write_key:
        raise ConfigurationError(
            "no write key: set RUDDER_WRITE_KEY, or pass --write-key-file (or --write-key, which every "
            "user of the host can read in `ps`)"
        )
    if not url:
        raise ConfigurationError("no data plane URL: pass --data-plane-url or set RUDDER_DATA_PLANE_URL")

    def pick(value: Any, env: str, kind: type) -> Any:
        if value is not None:
            return value
        raw = _env(env)
        if raw is None:
            return None
        try:
            return kind(raw)
        except ValueError:
            raise ConfigurationError(f"{env} must be a {kind.__name__}, not {raw!r}") from None

    limits_kw: dict[str, Any] = {}
    for key, value, env, kind in (
        ("max_bytes", args.max_batch_bytes, "RUDDER_FAST_MAX_BATCH_BYTES", int),
        ("max_events", args.max_batch_events, "RUDDER_FAST_MAX_BATCH_EVENTS", int),
        ("linger_s", args.linger, "RUDDER_FAST_LINGER", float),
    ):
        picked = pick(value, env, kind)
        if picked is not None:
            limits_kw[key] = picked
    try:
        limits = BatchLimits(**limits_kw)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    concurrency = pick(args.concurrency, "RUDDER_FAST_CONCURRENCY", int) or DEFAULT_CONCURRENCY
    if not 1 <= concurrency <= 64:
        raise ConfigurationError("concurrency must be between 1 and 64")
    no_gzip = args.no_gzip or (_env("RUDDER_FAST_NO_GZIP") or "").lower() in ("1", "true", "yes")
    from .transport import batch_url

    try:
        batch_url(url)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    raw_quota = args.quota_bytes or _env(quota.ENV_QUOTA_BYTES)
    try:
        quota_bytes = quota.parse_size(raw_quota) if raw_quota else 0
    except ValueError as exc:
        source = "--quota-bytes" if args.quota_bytes else quota.ENV_QUOTA_BYTES
        raise ConfigurationError(f"{source}: {exc}") from None
    on_full = args.on_full or _env(quota.ENV_ON_FULL) or "drop"
    if on_full not in ("drop", "drop_oldest"):
        raise ConfigurationError(f"{quota.ENV_ON_FULL} must be drop or drop_oldest, not {on_full!r}")
    metrics_port = pick(args.metrics_port, "RUDDER_FAST_METRICS_PORT", int)
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise ConfigurationError("metrics port must be between 0 and 65535")
    textfile = args.metrics_textfile or _env("RUDDER_FAST_METRICS_TEXTFILE")
    raw_rejected = args.rejected_max_bytes or _env("RUDDER_FAST_REJECTED_MAX_BYTES")
    try:
        rejected_max = quota.parse_size(raw_rejected) if raw_rejected else REJECTED_MAX_BYTES
    except ValueError as exc:
        raise ConfigurationError(f"--rejected-max-bytes: {exc}") from None
    return SenderConfig(
        rejected_max_bytes=rejected_max,
        metrics_port=metrics_port,
        metrics_host=args.metrics_host or _env("RUDDER_FAST_METRICS_HOST") or metrics.DEFAULT_HOST,
        metrics_textfile=Path(textfile) if textfile else None,
        quota_bytes=quota_bytes,
        on_full=on_full,
        spool_dir=config.resolve_spool_dir(args.spool_dir),
        write_key=write_key,
        data_plane_url=url,
        gzip=not no_gzip,
        limits=limits,
        concurrency=concurrency,
        connect_timeout=pick(args.connect_timeout, "RUDDER_FAST_CONNECT_TIMEOUT", float)
        or DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout=pick(args.read_timeout, "RUDDER_FAST_READ_TIMEOUT", float) or DEFAULT_READ_TIMEOUT_S,
        drain=args.drain,
        drain_timeout=args.drain_timeout,
        ca_bundle=args.ca_bundle or _env("RUDDER_FAST_CA_BUNDLE"),
    )


def _raise_fd_limit() -> None:
    """One descriptor per live segment: take the hard limit so thousands of producers fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else soft, hard)
            )
        except (ValueError, OSError):
            pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level_name = (args.log_level or _env("RUDDER_FAST_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level_name, logging.INFO),
        format="%(asctime)s rudder-fast-sender[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.allow_network_fs:
        os.environ["RUDDER_FAST_ALLOW_NETWORK_FS"] = "1"
    try:
        cfg = config_from_args(args)
        sender = Sender(cfg)
        locked = sender.acquire_lock()
    except (ConfigurationError, OSError) as exc:
        print(f"rudder-fast-sender: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not locked:
        print(
            f"rudder-fast-sender: another sender is already running for {cfg.spool_dir}",
            file=sys.stderr,
        )
        return EXIT_LOCKED
    try:
        sender.open_spool()
    except OSError as exc:
        print(f"rudder-fast-sender: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _raise_fd_limit()
    server = None
    if cfg.metrics_port is not None:
        try:
            server = metrics.MetricsServer(cfg.metrics_host, cfg.metrics_port, sender.metrics_bytes)
        except OSError as exc:
            print(
                f"rudder-fast-sender: cannot serve metrics on {cfg.metrics_host}:{cfg.metrics_port}: {exc}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        server.start()
        log.info("metrics at %s", server.url)
    signal.signal(signal.SIGTERM, sender.request_stop)
    signal.signal(signal.SIGINT, sender.request_stop)
    try:
        code = sender.run()
    finally:
        if server is not None:
            server.close()
    log.info("sender stopped (exit %d)", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
