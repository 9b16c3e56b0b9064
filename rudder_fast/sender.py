"""``rudder-fast-sender``'s run loop: it ties the intake, the delivery book, the workers and the spool's
upkeep together, and owns the lifecycle (the lock, signals, drain, shutdown).

How this works
--------------
One main thread reads; K worker threads deliver. The main thread owns every piece of state: each turn
of its loop applies the outcomes the workers reported (:meth:`Book.resolve`), lists the spool now and
then, reads and batches what is new (:class:`~rudder_fast.intake.Intake`), closes batches that have
lingered, deletes the segments that are settled, commits the ledger when the book changed, and
publishes its status once a second. It sleeps only when nothing happened, and then for at most 50 ms.

At-least-once: the ledger is committed only from the book, which advances a segment's offset only
over ranges whose batches were resolved; a crash resends only what was in flight, each event with its
original messageId. Memory is bounded whatever the backlog: at most K batches in flight, one waiting,
one being built, and a bounded read buffer per segment.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from . import __version__, config, ledger, locate, safefile
from .batching import Batch
from .book import Book, Outcome
from .delivery import Deliverer, DeliveryState, Quarantine, Recurring, Workers
from .errors import SpoolError
from .intake import Intake
from .layout import SpoolPaths, check_spool_files, ensure_spool, parent_warning
from .publish import Moment, Publisher
from .retry import RetryPolicy
from .transport import Transport, redact_url
from .upkeep import Upkeep
from .wire import SPEEDUPS_MISSING, WireMapper, speedups_built

log = logging.getLogger("rudder_fast.sender")

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_LOCKED: Final = 3
EXIT_DRAIN_FAILED: Final = 4
# A ledger commit (an fsync, twice) is put off while one resolved batch waits for it and the workers
# are not all busy, for at most this long: see Sender._commit_if_dirty.
COMMIT_COALESCE_S: Final = 0.5


class Sender:
    def __init__(self, cfg: config.SenderConfig, policy: RetryPolicy | None = None) -> None:
        self.cfg = cfg
        created = not os.path.lexists(cfg.spool_dir)
        self.paths: SpoolPaths = ensure_spool(cfg.spool_dir, allow_network_fs=cfg.allow_network_fs)
        if created and os.geteuid() == 0:
            log.warning(
                "created the spool %s as root, private to root: an app running as another user cannot "
                "write to it (every call is dropped as spool_unusable); run the sender as the app's user",
                self.paths.root,
            )
        check_spool_files(self.paths)
        warning = parent_warning(self.paths.root)
        if warning:
            log.warning("%s", warning)
        self.transports = [
            Transport(
                url,
                cfg.write_key,
                gzip=cfg.gzip,
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                pool_size=cfg.concurrency,
                ca_bundle=cfg.ca_bundle,
                user_agent=f"rudder-fast/{__version__}",
                proxy=proxy,
            )
            for url, proxy in zip(
                cfg.data_plane_urls, cfg.proxies or [None] * len(cfg.data_plane_urls), strict=True
            )
        ]
        policy = policy or RetryPolicy()
        # The full URLs posted to, in every message; the delivery gate picks one for each attempt.
        self.state = DeliveryState(
            [t.url for t in self.transports], concurrency=cfg.concurrency, policy=policy
        )
        self.quarantine = Quarantine(self.paths.rejected, cfg.rejected_max_bytes)
        self.book = Book()
        self.workers = Workers(
            cfg.concurrency,
            lambda stop: Deliverer(self.transports, policy, self.state, stop, self.quarantine),
            wake=self.state.close,
        )
        self.inflight = 0
        self.intake = Intake(
            self.paths.segments, self.book, mapper=WireMapper(__version__), quarantine=self.quarantine,
            submit=self._submit, cfg=cfg,
        )  # fmt: skip
        self.upkeep = Upkeep(self.paths, cfg, self.intake)
        self.publisher = Publisher(self.paths.status, cfg, self.state)
        self.commit_failures = Recurring(logging.ERROR, "ledger commits failed; retried every second")
        self._commit_retry_at = 0.0
        self._commit_error = ""  # the last failed commit's error
        self._committed_at = 0.0  # when the ledger was last committed
        self._acked = 0  # batches resolved since then
        self._lock_fd = -1
        self._signalled = False
        self._stop_deadline: float | None = None  # set by a signal under --drain-on-stop
        self._unsafe = False  # the spool stopped being private: write nothing more into it
        self._code: int | None = None  # the exit code, once the loop must stop
        self._next = {"rescan": 0.0, "sweep": 0.0, "privacy": 0.0}

    def __repr__(self) -> str:
        return (
            f"<Sender inflight={self.inflight} segments={len(self.intake.segments)} "
            f"state={self.state.state} sent={self.book.counters.sent}>"
        )

    # -- lifecycle -----------------------------------------------------------------------------------

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
        self.book.state = ledger.load(self.paths.ledger)
        self.upkeep.open_control()

    def request_stop(self, *_: Any) -> None:
        """The signal handler: only sets a flag (the main loop sets the workers' Event: a handler that
        took the Event's lock while the interrupted main thread held it would deadlock)."""
        self._signalled = True

    def run(self) -> int:
        self.workers.start()
        self.upkeep.syncer.start()
        planes = ", then ".join(
            redact_url(t.url) + (f" through the proxy {t.proxy}" if t.proxy else "") for t in self.transports
        )
        log.info(
            "sender started: spool %s, data plane%s %s, gzip %s, %d in flight, batches <= %d bytes, fsync "
            "every %s, quota %s",
            self.paths.root, "s" if len(self.transports) > 1 else "", planes,
            "on" if self.cfg.gzip else "off", self.cfg.concurrency, self.cfg.max_batch_bytes,
            f"{self.cfg.fsync_interval:g} s" if self.cfg.fsync_interval > 0 else "(off)",
            f"{self.cfg.quota_bytes:,} bytes" if self.cfg.quota_bytes > 0 else "none",
        )  # fmt: skip
        self._warn_at_start()
        deadline = None
        if self.cfg.drain and self.cfg.drain_timeout is not None:
            deadline = time.monotonic() + self.cfg.drain_timeout
        idle_sleep = config.POLL_MIN_S
        try:
            while self._code is None:
                now = time.monotonic()
                if self._signalled:
                    self._signalled = False
                    stop_at = self._drain_before_stopping(now)
                    if stop_at is None:
                        self._code = self._stopped_by_signal()
                        break
                    deadline = stop_at if deadline is None else min(deadline, stop_at)
                busy = self._turn(now)
                if self._code is None and (self.cfg.drain or self._stop_deadline is not None):
                    self._code = self._drain_verdict(now, busy, deadline)
                if self._code is not None:
                    break
                if busy:
                    idle_sleep = config.POLL_MIN_S
                    continue
                self._collect(block_for=idle_sleep)
                idle_sleep = min(config.POLL_MAX_S, idle_sleep * 2)
        finally:
            self._shutdown()
        return self._exit_code()

    def _turn(self, now: float) -> bool:
        """One turn of the loop: whether anything moved. Sets ``_code`` when the sender must stop."""
        got = self._collect(block_for=0.0)
        # A batch parked while K were in flight must go as soon as a worker is free, even when
        # nothing is left to read (the intake, which also submits it, skips finished segments).
        self.intake.submit_ready()
        due = self._next
        if now >= due["rescan"]:
            usage = self.intake.rescan()
            self.upkeep.enforce_quota(usage, now)
            self.upkeep.follow_segments()
            due["rescan"] = self.intake.next_rescan(now)
        if now >= due["sweep"]:
            due["sweep"] = now + config.TMP_SWEEP_S
            self.upkeep.sweep_tmp()
        if now >= due["privacy"]:
            due["privacy"] = now + config.PRIVACY_CHECK_S
            try:
                self.upkeep.check_private()
            except (SpoolError, OSError) as exc:
                log.error("stopping: %s. Nothing more is written to the spool.", exc)
                self._unsafe = True
                self._code = EXIT_USAGE
                return False
        progressed = self.intake.pump(now)
        self.intake.flush_due(now, caught_up=not progressed)
        self.upkeep.reap_settled()
        self._commit_if_dirty(now)
        self.state.watch(now)
        self.publisher.publish_if_due(now, self._moment)
        return progressed or bool(got)

    def _exit_code(self) -> int:
        """After the shutdown. When its ledger commit failed, what was delivered since the previous
        commit is sent again at the next start (same messageIds): said out loud, and a drain has not
        finished then."""
        code = EXIT_OK if self._code is None else self._code
        if not self.book.dirty or self._unsafe:
            return code
        draining = self.cfg.drain or self._stop_deadline is not None
        log.log(
            logging.ERROR if draining else logging.WARNING,
            "%sthe ledger could not record the last deliveries (%s): what the spool still holds of "
            "them is sent again at the next start, with the same messageIds",
            "drain incomplete: " if draining else "",
            self._commit_error,
        )
        return EXIT_DRAIN_FAILED if draining and code == EXIT_OK else code

    def _drain_before_stopping(self, now: float) -> float | None:
        """A first SIGTERM/SIGINT under ``--drain-on-stop``: keep delivering until the deadline it
        returns. None: stop now (no ``--drain-on-stop``, or a second signal)."""
        if self.cfg.drain_on_stop <= 0 or self._stop_deadline is not None:
            return None
        self._stop_deadline = now + self.cfg.drain_on_stop
        log.info(
            "asked to stop: delivering what is pending for up to %.0f s first (--drain-on-stop; "
            "a second signal stops at once)",
            self.cfg.drain_on_stop,
        )
        return self._stop_deadline

    def _warn_at_start(self) -> None:
        """What the operator should know before the first event goes: a data plane URL with a path of its
        own, the per-event loops running in Python, events waiting in another spool."""
        for given, transport in zip(self.cfg.data_plane_urls, self.transports, strict=True):
            warning = config.url_path_warning(given, transport.url)
            if warning:
                log.warning("%s", warning)
        if not speedups_built():
            log.warning("%s", SPEEDUPS_MISSING)
        self._warn_about_other_spools()

    def _warn_about_other_spools(self) -> None:
        """Producers writing to another well-known spool that no sender reads: the app and this sender
        were probably started with different spool directories (different users, or one side without
        RUDDER_FAST_SPOOL_DIR)."""
        for other in locate.other_spools(self.paths.root):
            log.warning("%s (this sender reads %s)", locate.describe(other), self.paths.root)

    def _stopped_by_signal(self) -> int:
        if (self.cfg.drain or self._stop_deadline is not None) and not self._drained():
            log.warning("drain interrupted by a signal with events still pending")
            return EXIT_DRAIN_FAILED
        return EXIT_OK

    def _drain_verdict(self, now: float, busy: bool, deadline: float | None) -> int | None:
        """With ``--drain``: the exit code once the drain is over (done, impossible, or too long)."""
        if self.state.state in ("halted", "disabled"):
            log.error(
                "drain stopped: the data plane %s",
                "refused the write key (401)"
                if self.state.state == "halted"
                else "answered 404 (a wrong path or a disabled source)",
            )
            return EXIT_DRAIN_FAILED
        if not busy and self._drained():
            log.info("drain complete: every event delivered or quarantined")
            return EXIT_OK
        if deadline is not None and now > deadline:
            log.error(
                "drain stopped after %s: %d bytes of events stay in the spool (sent at the next start)",
                f"--drain-on-stop {self.cfg.drain_on_stop:g} s"
                if self._stop_deadline is not None and deadline == self._stop_deadline
                else f"--drain-timeout {self.cfg.drain_timeout:g} s",
                self.intake.usage_bytes,
            )
            return EXIT_DRAIN_FAILED
        return None

    def _shutdown(self) -> None:
        self.workers.halt()  # workers abandon their waits at once
        deadline = time.monotonic() + self.cfg.stop_timeout
        while self.inflight and time.monotonic() < deadline:
            self._collect(block_for=0.05)
        if self.inflight:
            log.warning(
                "%d request(s) still in flight at shutdown: their events stay pending and will be "
                "resent (same messageIds)",
                self.inflight,
            )
        if not self._unsafe:
            self.upkeep.reap_settled()
            # The failed attempts of batches still in flight: counted in status and the metrics as
            # they happened, so into the ledger too (else the counter would go back at the next start).
            unsettled = self.state.retries_unsettled()
            if unsettled:
                self.book.counters.retried += unsettled
                self.state.retries_settled(unsettled)
                self.book.dirty = True
            self._commit_retry_at = 0.0  # a last try, whatever the back-off
            self._commit_if_dirty(time.monotonic(), now_or_never=True)
        for recurring in (
            self.quarantine.kept, self.quarantine.full, self.quarantine.splits, self.commit_failures,
            self.intake.unreadable, self.intake.too_large, self.upkeep.oldest_deleted,
        ):  # fmt: skip
            recurring.flush()
        if not self._unsafe:
            self.publisher.publish(self._moment(), final=True)
        self.workers.close()
        self.upkeep.close()  # (its last fsync pass first: it syncs through copies of the tails' descriptors)
        for seg in self.intake.segments.values():
            seg.tail.close()
        for transport in self.transports:
            transport.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- batches and their outcomes ------------------------------------------------------------------

    def _submit(self, batch: Batch) -> bool:
        if self.inflight >= self.cfg.concurrency:
            return False
        self.workers.submit(batch)
        self.inflight += 1
        return True

    def _collect(self, block_for: float) -> int:
        """Apply the outcomes the workers reported (waiting up to ``block_for`` for the first)."""
        results = self.workers.results
        try:
            batch, outcome = results.get(timeout=block_for) if block_for > 0 else results.get_nowait()
        except queue.Empty:
            return 0
        n = 0
        while True:
            self._apply(batch, outcome)
            n += 1
            try:
                batch, outcome = results.get_nowait()
            except queue.Empty:
                return n

    def _apply(self, batch: Batch, outcome: Outcome) -> None:
        self.inflight -= 1
        self._acked += 1
        now = time.monotonic()
        self.book.resolve(batch.id, outcome, time.time())
        self.state.retries_settled(outcome.retried)
        if not outcome.abandoned:
            self.publisher.delivered(now, outcome.delivered)
        batch.stubs = []  # the memory is freed at once, whoever still holds the batch

    def _commit_if_dirty(self, now: float, *, now_or_never: bool = False) -> None:
        """Commit the ledger if the book changed, coalescing commits while that keeps the crash bound.

        After a crash, the events sent twice are those of the batches in flight and of those resolved
        since the last commit. The promise is the batches in flight plus one, so a commit is put off
        only while one resolved batch waits for it and the workers are not all busy (halving the
        commits, two fsyncs each, in steady state), and never longer than COMMIT_COALESCE_S. A stop
        commits at once."""
        if not self.book.dirty or now < self._commit_retry_at:
            return
        if (
            not now_or_never
            and self._acked <= 1
            and self._acked + self.inflight <= self.cfg.concurrency
            and now < self._committed_at + COMMIT_COALESCE_S
        ):
            return
        try:
            self.upkeep.before_commit()  # the deletions the new ledger forgets are durable first
            ledger.commit(self.paths.ledger, self.book.ledger())
        except OSError as exc:
            # A full or failing disk: try again in a second (each try is an fsync), and say so once a
            # minute, not at every turn of the loop.
            self.book.dirty = True
            self._commit_retry_at = now + config.COMMIT_RETRY_S
            self._commit_error = str(exc)
            self.commit_failures.note(self._commit_error)
            return
        self._committed_at = now
        self._acked = 0
        if self._commit_retry_at:
            self._commit_retry_at = 0.0
            log.warning(
                "the ledger is committed again (after %d failed attempts)", self.commit_failures.total
            )

    def _drained(self) -> bool:
        """Nothing in flight, nothing left to read or batch, nothing unresolved."""
        if self.inflight:
            return False
        self.intake.rescan()
        return self.intake.caught_up()

    def _moment(self) -> Moment:
        return Moment(
            counters=self.book.counters,
            inflight=self.inflight,
            usage_bytes=self.intake.usage_bytes,
            segments=len(self.intake.segments),
            live_producers=self.intake.live_producers(),
        )

    def metrics_bytes(self) -> bytes:
        return self.publisher.metrics_bytes()


def main(argv: Sequence[str] | None = None) -> int:
    """The ``rudder-fast-sender`` command (see :mod:`rudder_fast.sender_cli`)."""
    from .sender_cli import main as command

    return command(argv)


if __name__ == "__main__":
    sys.exit(main())
