"""The disk quota: the ``control`` file the sender writes and producers read, and usage measurement.

How this works
--------------
The sender measures the spool's unacknowledged bytes (each segment's size minus its acknowledged
offset) at every directory scan (0.05-1 s) and publishes the verdict in ``<spool>/control``, a 64-byte
file it rewrites in place with ``pwrite``, with the time of the measurement:

    magic 8s | flags u8 | 3 reserved | rotate_gen u32 | quota_bytes u64 | usage_bytes u64 |
    updated_ns u64 | sender_pid u32 | 20 reserved

``flags`` bit 0 (OVER_QUOTA): producers drop (or block) new events; set when usage reaches the quota,
cleared once it falls below 90 % of it (hysteresis, so the flag does not flicker at the boundary).
Bit 1 (ROTATE) with a new ``rotate_gen``: under ``drop_oldest``, asks live producers to seal their
segment so the sender can delete it. Bit 2 (DROP_OLDEST): the sender makes room itself; producers
never stop for the quota while it runs.

Producers never map the file (a truncated mapping would kill them with SIGBUS): they read it with one
``pread`` at most once a second, or when their allowance runs out. Each publication grants a producer
an *allowance*, ``quota - usage`` bytes, and a producer that has written its allowance stops (drops or
blocks) until a newer publication grants more. So between two measurements each producer can write at
most what was left under the quota at the last one.

A publication is only trusted while a sender holds ``sender.lock`` *and* it is fresh
(``updated_ns`` within ``STALE_NS`` of the producer's clock): a sender that died, or that is stopped
(SIGSTOP, ``docker pause``, a debugger) or hung, publishes nothing new, and producers then measure the
spool themselves once a second against the last published quota (or ``RUDDER_FAST_QUOTA_BYTES``), so
the spool still stops at the quota. The bound on what producers write past the quota, with or without
a working sender, is therefore one allowance per producer: at most (number of producers) x (quota -
usage at the last measurement).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from . import config, safefile
from .tail import list_segments

CONTROL = struct.Struct("<8sB3xIQQQI20x")
CONTROL_SIZE: Final = CONTROL.size  # 64
CONTROL_MAGIC: Final = b"RFCTRL01"
FLAGS_OFFSET: Final = 8
OVER_QUOTA: Final = 1
ROTATE: Final = 2
DROP_OLDEST: Final = 4

# Producers may write again once usage falls below this fraction of the quota.
RESUME_FRACTION: Final = 0.9

# A publication older (or newer: the clock stepped) than this is not trusted: the sender is stopped,
# hung or gone. It publishes at every scan, at most 1 s apart; five times that leaves room for a
# slow disk without letting a frozen sender switch the quota off for long.
STALE_NS: Final = 5_000_000_000


@dataclass(frozen=True, slots=True)
class Control:
    flags: int = 0
    rotate_gen: int = 0
    quota_bytes: int = 0
    usage_bytes: int = 0
    updated_ns: int = 0
    sender_pid: int = 0

    def encode(self) -> bytes:
        return CONTROL.pack(
            CONTROL_MAGIC, self.flags, self.rotate_gen, self.quota_bytes, self.usage_bytes,
            self.updated_ns, self.sender_pid,
        )  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Control | None:
        if len(data) < CONTROL_SIZE:
            return None
        magic, flags, gen, quota, usage, updated, pid = CONTROL.unpack_from(data)
        if magic != CONTROL_MAGIC:
            return None
        return cls(flags, gen, quota, usage, updated, pid)

    def fresh(self, now_ns: int) -> bool:
        """Published within ``STALE_NS`` of ``now_ns`` (either way: a clock step makes it stale)."""
        return abs(now_ns - self.updated_ns) <= STALE_NS


def next_flags(over: bool, usage: int, quota: int) -> bool:
    """Hysteresis: over quota from ``quota`` up, back under below ``RESUME_FRACTION`` of it."""
    if quota <= 0:
        return False
    if over:
        return usage >= quota * RESUME_FRACTION
    return usage >= quota


UNBOUNDED: Final = -1


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a producer may do now: ``over`` (drop or block), or write; ``grant`` is a new allowance in
    bytes from now (``UNBOUNDED``: no limit), or None to keep what is left of the current one."""

    over: bool
    grant: int | None = None


def judge_publication(
    control: Control | None, *, sender_alive: bool, now_ns: int, grant_stamp: int, room_left: int
) -> Verdict | None:
    """A producer's verdict from the sender's publication; None when there is none to trust (no
    sender, or a stale one): the producer must then measure the spool itself (:func:`judge_usage`).

    ``grant_stamp`` is the ``updated_ns`` of the publication the producer's current allowance came
    from, ``room_left`` what is left of it: a publication grants an allowance once, never twice."""
    if control is None or not sender_alive or not control.fresh(now_ns):
        return None
    if control.flags & DROP_OLDEST or control.quota_bytes <= 0:
        return Verdict(False, UNBOUNDED)
    if control.flags & OVER_QUOTA:
        return Verdict(True, 0)
    if control.updated_ns != grant_stamp:
        room = max(0, control.quota_bytes - control.usage_bytes)
        return Verdict(room <= 0, room)
    return Verdict(room_left <= 0)


class UnreadSpoolWatch:
    """When a producer should warn that no sender reads its spool: once it has written for
    ``NO_SENDER_WARNING_NS`` without seeing one, then at most every ``NO_SENDER_REPEAT_NS``. Fed by the
    producer's periodic quota refresh, so it costs no syscall of its own."""

    __slots__ = ("next_warning_ns", "unread_since_ns")

    def __init__(self) -> None:
        self.unread_since_ns: int | None = None
        self.next_warning_ns = 0

    def observe(self, now_ns: int, sender_alive: bool) -> bool:
        """Record what the last refresh saw; True when it is time to warn."""
        if sender_alive:
            self.unread_since_ns = None
            return False
        since = self.unread_since_ns
        if since is None or now_ns < since:  # (a clock stepping back restarts the wait)
            self.unread_since_ns = now_ns
            return False
        if now_ns - since < config.NO_SENDER_WARNING_NS or now_ns < self.next_warning_ns:
            return False
        self.next_warning_ns = now_ns + config.NO_SENDER_REPEAT_NS
        return True


def no_sender_warning(spool_dir: Path, unread_s: float) -> str:
    """What the producer logs when :class:`UnreadSpoolWatch` says so."""
    return (
        f"no rudder-fast-sender has read the spool {spool_dir} for {unread_s:.0f} s: the events written "
        f"there wait until one runs on it. Start one with `rudder-fast-sender --spool-dir {spool_dir}`, "
        f"or set {config.ENV_SPOOL_DIR} to the same directory for the app and the sender "
        "(`rudder-fast doctor` checks both)"
    )


def judge_usage(was_over: bool, usage: int, limit: int) -> Verdict:
    """A producer's verdict from its own measurement of the spool against ``limit`` (0: none)."""
    if limit <= 0:
        return Verdict(False, UNBOUNDED)
    over = next_flags(was_over, usage, limit)
    return Verdict(over, max(0, limit - usage))


# Under drop_oldest, live producers are asked to seal their segments (so that the sender may delete
# them) for this long after usage reaches the quota; they act on the new rotate_gen within a second.
ROTATE_FOR_S: Final = 1.0


def sender_flags(
    current: Control, *, usage: int, quota_bytes: int, drop_oldest: bool, now: float, rotate_until: float
) -> tuple[int, int, float]:
    """What the sender publishes after measuring ``usage`` (after any deletions ``drop_oldest`` made):
    the flags, the rotate generation, and until when a rotation request stands."""
    flags, gen = current.flags, current.rotate_gen
    if quota_bytes and drop_oldest:
        flags = (flags | DROP_OLDEST) & ~OVER_QUOTA
        if usage >= quota_bytes and not flags & ROTATE:
            flags |= ROTATE  # live producers: seal your segments so they can go
            gen += 1
            rotate_until = now + ROTATE_FOR_S
        elif flags & ROTATE and now >= rotate_until:
            flags &= ~ROTATE
        return flags, gen, rotate_until
    flags &= ~(DROP_OLDEST | ROTATE)
    over = next_flags(bool(flags & OVER_QUOTA), usage, quota_bytes)
    return (flags | OVER_QUOTA) if over else (flags & ~OVER_QUOTA), gen, rotate_until


class ControlFile:
    """The sender's side: creates the file and rewrites it in place at every measurement."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = safefile.open_regular(path, os.O_RDWR | os.O_CREAT)
        if os.fstat(self._fd).st_size < CONTROL_SIZE:
            os.ftruncate(self._fd, CONTROL_SIZE)
        self.current = Control.decode(os.pread(self._fd, CONTROL_SIZE, 0)) or Control()

    def publish(self, control: Control) -> None:
        try:
            os.pwrite(self._fd, control.encode(), 0)  # in place: the file is already allocated
        except OSError:
            return  # retried at the next measurement; producers fall back on their own
        self.current = control

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Allowance:
    """A producer's standing under the quota: over it or not, and the bytes it may still write (its
    allowance, counted from ``written_at_grant``, the producer's total written bytes then). Refreshed on
    the producer's slow path: from the sender's publication while one is fresh, else by measuring the
    spool (at most once a second, and under 1 % of the time: it runs on the app's thread)."""

    __slots__ = (
        "check_ns", "checked_ns", "fallback", "grant_stamp", "measured_ns", "over", "room", "rotate_seen",
        "sender_alive", "written_at_grant",
    )  # fmt: skip

    def __init__(self, fallback_quota: int) -> None:
        self.fallback = fallback_quota  # enforced only while no sender publishes a quota
        self.over = False
        self.room = UNBOUNDED
        self.written_at_grant = 0
        self.grant_stamp = 0  # updated_ns of the publication the allowance came from (0: measured)
        self.measured_ns: int | None = None
        self.check_ns = 0  # checked again from then on...
        self.checked_ns = 0  # ...or if the clock steps back before this
        self.rotate_seen = -1
        self.sender_alive = False  # as of the last refresh

    def due(self, now_ns: int) -> bool:
        return not self.checked_ns <= now_ns < self.check_ns

    def room_left(self, written: int) -> int:
        """What is left of the allowance after ``written`` bytes in all, or UNBOUNDED."""
        if self.room < 0:
            return UNBOUNDED
        return max(0, self.room - (written - self.written_at_grant))

    def refresh(self, now_ns: int, paths: SpoolLike, written: int) -> bool:
        """Read the publication (or measure) and update the verdict. True if the sender asks live
        producers to seal their segment (a new rotation generation)."""
        self.checked_ns = now_ns
        published = read_control(paths.control)
        rotate = False
        if published is not None and published.rotate_gen != self.rotate_seen:
            rotate = self.rotate_seen >= 0 or bool(published.flags & ROTATE)
            self.rotate_seen = published.rotate_gen
        self.sender_alive = sender_running(paths.sender_lock)
        verdict = judge_publication(
            published,
            sender_alive=self.sender_alive,
            now_ns=now_ns,
            grant_stamp=self.grant_stamp,
            room_left=self.room_left(written),
        )
        next_check = config.QUOTA_CHECK_NS
        if verdict is not None:
            if verdict.grant is not None and published is not None:
                self.grant_stamp = published.updated_ns
        else:
            verdict, next_check = self._measure(now_ns, paths, published, written)
        if verdict.grant is not None:
            self.room = verdict.grant
            self.written_at_grant = written
        self.over = verdict.over
        self.check_ns = now_ns + (config.OVER_QUOTA_RECHECK_NS if verdict.over else next_check)
        return rotate

    def _measure(
        self, now_ns: int, paths: SpoolLike, published: Control | None, written: int
    ) -> tuple[Verdict, int]:
        """No fresh sender: the producer's own measurement of the spool (at most once a second)."""
        self.grant_stamp = 0
        limit = (published.quota_bytes if published else 0) or self.fallback
        if limit <= 0:
            return Verdict(False, UNBOUNDED), config.QUOTA_CHECK_NS
        if self.measured_ns is not None and 0 <= now_ns - self.measured_ns < config.QUOTA_CHECK_NS:
            return Verdict(self.room_left(written) <= 0), config.QUOTA_CHECK_NS
        started = time.monotonic_ns()
        try:
            usage = measure_usage(paths.segments, read_acked(paths.ledger))
        except OSError:
            usage = 0  # the spool cannot be measured now: the write path reports its trouble
        took = time.monotonic_ns() - started
        self.measured_ns = now_ns
        # Measuring a huge spool is slow and runs on the app's thread: keep it under 1 % of the time.
        return judge_usage(self.over, usage, limit), max(config.QUOTA_CHECK_NS, 100 * took)


class SpoolLike(Protocol):
    @property
    def control(self) -> Path: ...
    @property
    def sender_lock(self) -> Path: ...
    @property
    def segments(self) -> Path: ...
    @property
    def ledger(self) -> Path: ...


def read_control(path: Path) -> Control | None:
    """The published control, or None if it is absent, damaged, or not a regular file."""
    try:
        data = safefile.pread_small(path, CONTROL_SIZE)
    except OSError:
        return None
    return Control.decode(data) if data is not None else None


def read_acked(ledger_path: Path) -> dict[str, int]:
    """The sender's last committed offsets (empty if there is no valid ledger)."""
    from . import ledger

    try:
        state = ledger.read(ledger_path)
    except OSError:
        return {}
    return state.offsets if state is not None else {}


def sender_running(lock_path: Path) -> bool:
    """True if a sender holds the spool's ``sender.lock`` (a non-blocking probe; a FIFO, directory or
    symlink in its place is no sender)."""
    try:
        fd = safefile.open_regular(lock_path, os.O_RDONLY, own=False)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    return False


def measure_usage(segments_dir: Path, acked: dict[str, int]) -> int:
    """Unacknowledged segment bytes on disk: each segment's size minus its acknowledged offset."""
    total = 0
    for path in list_segments(segments_dir):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        total += max(0, size - acked.get(path.name, 0))
    return total
