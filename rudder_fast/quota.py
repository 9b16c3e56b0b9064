"""The disk quota: the ``control`` file the sender writes and every producer reads, and usage measurement.

How this works
--------------
The sender measures the spool's unacknowledged bytes (each segment's size minus its acknowledged
offset) a few times a second and publishes the verdict in ``<spool>/control``, a 64-byte file it updates
in place with ``pwrite``. Producers map it read-only (``mmap``) and test one byte per call, about 0.1 µs:

    magic 8s | flags u8 | 3 reserved | rotate_gen u32 | quota_bytes u64 | usage_bytes u64 |
    updated_ns u64 | sender_pid u32 | 20 reserved

``flags`` bit 0 (OVER_QUOTA): producers drop (or block) new events; set when usage reaches the quota,
cleared once it falls below 90 % of it (hysteresis, so the flag does not flicker at the boundary).
Bit 1 (ROTATE): with the ``drop_oldest`` policy, asks live producers to seal their segment so the sender
can delete it; a producer acts once per ``rotate_gen``.

The flag is only trusted while a sender holds ``sender.lock``: a sender that died with the flag set must
not silence producers forever. Without a sender, producers measure usage themselves once a second
against the last published quota (or ``RUDDER_FAST_QUOTA_BYTES``), so the spool still stops at the quota.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .tail import list_segments

CONTROL = struct.Struct("<8sB3xIQQQI20x")
CONTROL_SIZE: Final = CONTROL.size  # 64
CONTROL_MAGIC: Final = b"RFCTRL01"
FLAGS_OFFSET: Final = 8
OVER_QUOTA: Final = 1
ROTATE: Final = 2

# Producers may write again once usage falls below this fraction of the quota.
RESUME_FRACTION: Final = 0.9

ENV_QUOTA_BYTES: Final = "RUDDER_FAST_QUOTA_BYTES"
ENV_ON_FULL: Final = "RUDDER_FAST_ON_FULL"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGTkmgt]?)(i?[Bb])?\s*$")


def parse_size(text: str) -> int:
    """``"512M"`` → 536870912: a whole number with an optional K/M/G/T (x1024) suffix."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use a number with an optional K, M or G suffix)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]


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


def next_flags(over: bool, usage: int, quota: int) -> bool:
    """Hysteresis: over quota from ``quota`` up, back under below ``RESUME_FRACTION`` of it."""
    if quota <= 0:
        return False
    if over:
        return usage >= quota * RESUME_FRACTION
    return usage >= quota


class ControlFile:
    """The sender's side: creates the file and updates it in place (producers keep their mapping)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._fd).st_size < CONTROL_SIZE:
            os.ftruncate(self._fd, CONTROL_SIZE)
        self.current = Control.decode(os.pread(self._fd, CONTROL_SIZE, 0)) or Control()

    def publish(self, control: Control) -> None:
        if control != self.current:
            try:
                os.pwrite(self._fd, control.encode(), 0)  # in place: the file is already allocated
            except OSError:
                return  # retried at the next measurement; producers fall back on their own
            self.current = control

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def map_control(path: Path) -> mmap.mmap | None:
    """A read-only shared mapping of the control file, or None if it is absent or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size < CONTROL_SIZE:
            return None
        mm = mmap.mmap(fd, CONTROL_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if mm[:8] != CONTROL_MAGIC:
        mm.close()
        return None
    return mm


def read_control(path: Path) -> Control | None:
    try:
        with open(path, "rb") as f:
            return Control.decode(f.read(CONTROL_SIZE))
    except OSError:
        return None


def read_acked(ledger_path: Path) -> dict[str, int]:
    """The sender's last committed offsets (empty if there is no valid ledger)."""
    from . import ledger

    try:
        state = ledger.decode(ledger_path.read_bytes())
    except OSError:
        return {}
    return state.offsets if state is not None else {}


def sender_running(lock_path: Path) -> bool:
    """True if a sender holds the spool's ``sender.lock`` (a non-blocking probe)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
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
