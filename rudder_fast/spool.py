"""The producer side of the spool: one segment file per process, appended with one write per event.

How this works
--------------
A :class:`SegmentWriter` owns at most one open segment. The first append creates it: a file in
``tmp/`` (O_EXCL, 0600) gets its header and an exclusive ``flock`` and is then renamed into
``segments/``, so the sender never sees a file without a header or a lock. Each event is one frame,
written with one ``os.write`` on an ``O_APPEND`` descriptor: once the call returns, the bytes are in the
page cache and survive the process being SIGKILLed. The lock tells the sender the writer is alive; it
is released by the kernel when the process dies, however it dies.

The segment is sealed (a seal frame, then close) when it reaches a size or an age, and the next append
opens the next one. Idle producers open nothing.

fork: the child must not write to its parent's file (two writers would interleave frames and the
seq numbers would collide). ``os.register_at_fork`` resets the child's writer, and a pid check on every
append catches forks that skip the hooks (uWSGI without its fork hook, fork from C). The child closes
its copy of the descriptor but never unlocks it: flock belongs to the open file description the parent
still uses, so unlocking would release the parent's lock.

Failures never raise: a short write, ENOSPC or EFBIG is rolled back with ``ftruncate`` to the last
whole frame, counted as a drop, and the disk is left alone for a moment. The next successful append
carries a drop-marker frame with the counts, so the sender learns what was lost.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgpack

from . import config, quota
from .counts import DROP_DISK, DROP_QUOTA, DROP_REENTRANT, DROP_SPOOL
from .errors import SpoolError
from .framing import (
    FRAME_DROPS,
    FRAME_EVENT,
    FRAME_META,
    FRAME_PREFIX,
    FRAME_SEAL,
    SYNC,
    SegmentHeader,
    crc32,
    encode_frame,
    encode_header,
)
from .layout import SpoolPaths, create_segment, ensure_spool, segment_name
from .sizes import JSON_CHECK_ABOVE, check_record, check_size, refusal

log = logging.getLogger("rudder_fast")


_FIRST_CALL: Final = 0x100  # in ``_flags``: this process has not checked the quota yet
_NO_ROOM: Final = -2  # from ``_prepare``: the quota stops this call
_OVER_QUOTA: Final = "over quota"  # from ``_append_locked``: the quota stops this call (not counted yet)

_meta_pack = FRAME_META.pack
_prefix_pack = FRAME_PREFIX.pack
_crc32 = crc32  # zlib-ng's where installed: see framing
_getpid = os.getpid
_write = os.write

_OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC

_live_writers: weakref.WeakSet[SegmentWriter] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()
# Serialises the reset of writers in a child forked without Python's hooks, where several threads may
# notice the new pid at once. Only ever held while a child resets, so a parent forks with it free (the
# at-fork hook replaces it anyway); re-entrant, for a signal handler that emits during a reset.
_reset_lock = threading.RLock()


def _reset_all_after_fork() -> None:
    global _reset_lock
    _reset_lock = threading.RLock()  # a thread of the parent may have held it at the fork
    for writer in list(_live_writers):
        writer._after_fork()


def _close_all_at_exit() -> None:
    """At interpreter exit: seal every open segment, writing the drop counts not yet reported."""
    for writer in list(_live_writers):
        try:
            writer.close()
        except Exception:  # noqa: BLE001, S110 - nothing may escape at exit, and there is no one to tell
            pass


def _install_process_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if not _hooks_installed:
            os.register_at_fork(after_in_child=_reset_all_after_fork)
            atexit.register(_close_all_at_exit)
            _hooks_installed = True


def new_nonce() -> str:
    return os.urandom(8).hex()


class SegmentWriter:
    """Appends framed records to this process's own segment file. Thread-safe and fork-safe."""

    __slots__ = (
        "__weakref__", "_backoff_reason", "_block", "_block_timeout", "_busy", "_disk_retry_ns",
        "_fallback_quota_bytes", "_fast_from_ns", "_fast_until_ns", "_fd", "_flags", "_index",
        "_last_report_ns", "_last_warning_ns", "_lock", "_max_age_ns", "_max_bytes", "_other_frames",
        "_packer", "_path", "_paths", "_pending_warning", "_pid", "_quota", "_roll_at_ns", "_seq",
        "_size", "_size_limit", "_unread", "_unreported", "_written_before", "dropped", "id_prefix", "nonce",
        "spool_dir",
    )  # fmt: skip

    def __init__(
        self,
        spool_dir: Path,
        *,
        segment_max_bytes: int = config.SEGMENT_MAX_BYTES,
        segment_max_age_s: float = config.SEGMENT_MAX_AGE_S,
        on_full: str = "drop",
        block_timeout: float = 5.0,
        quota_bytes: int = 0,
    ) -> None:
        self.spool_dir = spool_dir
        self._max_bytes = segment_max_bytes
        self._max_age_ns = int(segment_max_age_s * 1e9)
        self._block = on_full == "block"
        self._block_timeout = block_timeout
        self._fallback_quota_bytes = quota_bytes  # enforced only while no sender publishes a quota
        self._paths: SpoolPaths | None = None
        self._lock = threading.RLock()
        self._busy = False  # inside append's critical section (the lock is re-entrant for one thread)
        self._packer = msgpack.Packer()
        self._pid = 0
        self._reset_state(os.getpid())
        _install_process_hooks()
        _live_writers.add(self)

    def _reset_state(self, pid: int) -> None:
        nonce = new_nonce()
        self.nonce = nonce
        self.id_prefix = nonce + "-"  # messageId = f"{nonce}-{seq}"
        self._seq = 0
        self._index = 0
        self._fd = -1
        self._size = 0
        self._size_limit = 0  # the fast path's bound on _size: rotation size, or the quota's room
        self._roll_at_ns = 0
        # The fast path runs while _fast_from_ns <= now < _fast_until_ns: 0/0 whenever anything needs
        # the slow path (no open file, a disk back-off, drops to report), and a window that a clock
        # stepping backwards also leaves.
        self._fast_from_ns = 0
        self._fast_until_ns = 0
        self._path: Path | None = None
        self._disk_retry_ns = 0
        self._backoff_reason = DROP_DISK
        self._other_frames = 0  # seq numbers of drop markers, seals and failed writes: not events
        self.dropped: dict[str, int] = {}
        self._unreported: dict[str, int] = {}
        self._last_warning_ns = 0
        self._pending_warning: str | None = None
        self._last_report_ns = 0
        # Quota. The hot path tests ``_flags`` alone: non-zero sends the call to ``_admit`` (the first
        # call of a process, so that it obeys the quota too, or over quota). ``_quota`` holds this
        # process's allowance; ``_written_before + _size`` is every byte it has written (all segments).
        self._flags = _FIRST_CALL
        self._quota = quota.Allowance(self._fallback_quota_bytes)
        self._unread = quota.UnreadSpoolWatch()
        self._written_before = 0
        self._pid = pid  # last: other threads take the pid check as "state ready"

    def __repr__(self) -> str:
        return (
            f"<SegmentWriter pid={self._pid} nonce={self.nonce} seq={self._seq} "
            f"segment={self._path.name if self._path else None} size={self._size}>"
        )

    def __del__(self) -> None:
        # An emitter dropped without close(): release the file (and its lock) so the sender can finish it.
        try:
            if self._fd >= 0 and self._pid == os.getpid():
                self.close_segment()
        except Exception:  # noqa: BLE001, S110 - a finaliser must not raise (Python would only print it)
            pass

    @property
    def accepted(self) -> int:
        """Events written by this process (since it started or forked)."""
        return self._seq - self._other_frames

    @property
    def segment_path(self) -> Path | None:
        return self._path

    def _after_fork(self) -> None:
        """In a child: forget the parent's segment (close our copy of the fd, never unlock it).

        Runs from the at-fork hook, or from the pid check of the first call after a fork that skipped
        the hooks (then possibly in several threads at once: serialised, and ``_pid`` is set last)."""
        with _reset_lock:
            pid = os.getpid()
            if self._pid == pid:
                return
            fd = self._fd
            self._lock = threading.RLock()  # another thread may have held it at the fork
            self._busy = False
            self._packer = msgpack.Packer()
            self._reset_state(pid)
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def append(self, record: list[Any], now_ns: int) -> str | None:
        """Write one event record; its generated messageId, or None if it was dropped (and counted)."""
        if self._pid != _getpid():
            self._after_fork()
        while True:
            if self._flags and not self._admit(now_ns, record):
                return None
            try:
                with self._lock:  # an RLock: a signal handler calling in from inside a call gets here...
                    if self._busy:  # ...and is turned away: the interrupted call's state is half-updated
                        self._reentrant()
                        return None
                    self._busy = True
                    try:
                        result = self._append_locked(record, now_ns)
                    finally:
                        self._busy = False
            finally:
                if self._pending_warning is not None:
                    self._log_pending_warning()
            if result is not _OVER_QUOTA:
                return result
            # This process's allowance ran out and the quota is reached: back to _admit, which drops or
            # (``block``) waits for room.

    def _append_locked(self, record: list[Any], now_ns: int) -> str | None:
        """The body of append, under the writer lock."""
        # Packed first: a record that cannot be packed is refused before anything touches the disk.
        try:
            payload = self._packer.pack(record)
        except (UnicodeEncodeError, TypeError, ValueError, OverflowError):
            self._packer = msgpack.Packer()  # do not trust its state after a failure
            raise refusal(record) from None
        n = len(payload)
        if n > JSON_CHECK_ABOVE:
            check_size(record, n)
        if not self._fast_from_ns <= now_ns < self._fast_until_ns or self._size >= self._size_limit:
            fd = self._prepare(now_ns)
            if fd < 0:
                return _OVER_QUOTA if fd == _NO_ROOM else None
        seq = self._seq
        body = _meta_pack(n, FRAME_EVENT, seq) + payload
        frame = _prefix_pack(SYNC, _crc32(body)) + body
        try:
            self._seq = seq + 1  # before the write: an exception raised around it must not reuse seq
            written = _write(self._fd, frame)
        except OSError as exc:
            self._write_failed(now_ns, exc, 0)
            return None
        except BaseException:  # raised by a signal handler around the write
            self._interrupted_write(len(frame))
            raise
        if written != len(frame):
            self._write_failed(now_ns, OSError(errno.ENOSPC, "short write"), written)
            return None
        self._size += written
        return self.id_prefix + str(seq)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """The writer lock for the slow paths, and whether this thread may change the writer's state:
        False when this thread is already inside a call (a signal handler calling in)."""
        with self._lock:
            if self._busy:
                yield False
                return
            self._busy = True
            try:
                yield True
            finally:
                self._busy = False

    def _interrupted_write(self, frame_len: int) -> None:
        """An exception interrupted the call around its write: keep the file whole-framed and the
        counts right. The frame either went in entirely (it stays: an event whose id was not returned),
        or not at all, or partly (taken back)."""
        try:
            size = os.fstat(self._fd).st_size
            extra = size - self._size
            if extra == frame_len:
                self._size = size
                return
            if 0 < extra < frame_len:
                os.ftruncate(self._fd, self._size)
            self._other_frames += 1  # its seq number is no event's
        except OSError:
            pass

    def _reentrant(self) -> None:
        """A call made while this thread already holds the writer lock (from a signal or logging
        handler inside a call): waiting would deadlock, so the event is dropped and counted."""
        self.dropped[DROP_REENTRANT] = self.dropped.get(DROP_REENTRANT, 0) + 1
        self._unreported[DROP_REENTRANT] = self._unreported.get(DROP_REENTRANT, 0) + 1
        self._fast_until_ns = 0

    def _log_pending_warning(self) -> None:
        message, self._pending_warning = self._pending_warning, None
        if message:
            log.warning(message)  # outside the lock: a handler may itself emit events

    def _admit(self, now_ns: int, record: list[Any]) -> bool:
        """``_flags`` is set: the first call of this process (check the quota before writing), or over
        quota: drop, or (``block``) wait for room. False when the call was dropped (counted)."""
        with self._exclusive() as mine:
            if not mine:
                self._reentrant()
                return False
            if self._flags & _FIRST_CALL:
                check_record(record)  # bad input is refused before the spool is even created
                self._flags = 0
                if self._paths is None:
                    try:
                        self._paths = ensure_spool(self.spool_dir)
                    except (SpoolError, OSError, ValueError):
                        return True  # the write path counts and reports the problem
                self._refresh_quota(now_ns, force=True)
            else:
                # Dropped calls never reach the write path's periodic refresh: re-read the quota here
                # (every 50 ms while over), or a producer whose sender died would stay over forever.
                self._refresh_quota(now_ns)
        if not self._flags:
            return True
        check_record(record)  # bad input still raises, whatever the quota
        if self._block and self._wait_for_room():
            return True
        with self._exclusive() as mine:
            if not mine:
                self._reentrant()
                return False
            self._count_drop_locked(DROP_QUOTA, now_ns)
            self._report_drops_now(now_ns)
        if self._pending_warning is not None:
            self._log_pending_warning()
        return False

    def _wait_for_room(self) -> bool:
        """``on_full="block"``: wait up to the block timeout for the quota to leave room (True)."""
        deadline = time.monotonic() + self._block_timeout
        pause = 0.001
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            with self._exclusive() as mine:
                if mine:
                    self._refresh_quota(time.time_ns(), force=True)
            if not self._flags:
                return True
        return False

    def _report_drops_now(self, now_ns: int) -> None:
        """While calls are being dropped, write the counts at most every 100 ms (not only at the next
        successful append), so a process that exits or dies meanwhile has reported nearly all of them."""
        if not self._unreported or 0 <= now_ns - self._last_report_ns < config.DROP_REPORT_INTERVAL_NS:
            return
        self._last_report_ns = now_ns
        if self._fd < 0:
            try:
                self._open_segment(now_ns)  # a header and a drop marker: tiny, even over the quota
            except (SpoolError, OSError):
                return
        self._write_drops(now_ns, for_call=False)

    def _write_drops(self, now_ns: int, for_call: bool = True) -> bool:
        """Write a drop-marker frame with the unreported counts. False if the disk refused (then, when
        the marker was written for a call, that call is counted as dropped: it returns None)."""
        frame = self._drops_frame()
        self._seq += 1
        try:
            written = _write(self._fd, frame)
        except OSError as exc:
            self._write_failed(now_ns, exc, 0, count=for_call)
            return False
        if written != len(frame):
            self._write_failed(now_ns, OSError(errno.ENOSPC, "short write"), written, count=for_call)
            return False
        self._size += written
        self._other_frames += 1
        self._unreported = {}
        return True

    def _refresh_quota(self, now_ns: int, force: bool = False) -> None:
        """Follow the quota (see quota.Allowance): once a second while writing, every 50 ms while over,
        or now (``force``). Sets ``_flags`` and the bound the allowance puts on the fast path."""
        allowance = self._quota
        if not force and not allowance.due(now_ns):
            return  # (a clock stepping backwards makes it due: checked again)
        if self._paths is None:
            allowance.checked_ns, allowance.check_ns = now_ns, now_ns + config.QUOTA_CHECK_NS
            return
        if allowance.refresh(now_ns, self._paths, self._written_before + self._size):
            self._roll_at_ns = 0  # seal at the next append so that the sender may delete the file
            self._fast_until_ns = 0
        self._flags = quota.OVER_QUOTA if allowance.over else 0
        self._bound()
        unread = self._unread
        if unread.observe(now_ns, allowance.sender_alive) and self._pending_warning is None:
            since = unread.unread_since_ns or now_ns
            self._pending_warning = quota.no_sender_warning(self.spool_dir, (now_ns - since) / 1e9)

    def _bound(self) -> None:
        """The fast path's bound on ``_size``: the rotation size, or the end of the allowance."""
        left = self._quota.room_left(self._written_before + self._size)
        self._size_limit = self._max_bytes if left < 0 else min(self._max_bytes, self._size + left)

    def count_drop(self, reason: str, now_ns: int) -> None:
        """Count an event dropped before it reached the disk; reported by the next frame."""
        with self._exclusive() as mine:
            if mine:
                self._count_drop_locked(reason, now_ns)
            else:
                self._reentrant()
        if self._pending_warning is not None:
            self._log_pending_warning()

    def _count_drop_locked(self, reason: str, now_ns: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self._fast_until_ns = 0  # the next append takes the slow path, which reports the drops
        self._unreported[reason] = self._unreported.get(reason, 0) + 1
        if abs(now_ns - self._last_warning_ns) >= config.WARNING_INTERVAL_S * 1e9:
            self._last_warning_ns = now_ns
            self._pending_warning = f"dropping events ({reason}); dropped so far: {self.dropped}"

    def _drops_frame(self) -> bytes:
        """A drop-marker frame for the drops not yet reported; the caller advances seq."""
        return encode_frame(FRAME_DROPS, self._seq, msgpack.packb(self._unreported))

    def _write_failed(self, now_ns: int, exc: OSError, written: int, count: bool = True) -> None:
        """Take back the part of a frame a short write left (only whole frames may stay), back off."""
        self._other_frames += 1  # the seq number the failed frame took is no event's
        fd = self._fd
        try:
            size = os.fstat(fd).st_size
            if written:
                size -= written  # exactly our bytes: this process is the file's only writer
                os.ftruncate(fd, size)
            self._size = size  # the file's real size, whatever an interrupted call left in _size
        except OSError:
            pass
        if exc.errno == errno.EBADF:
            self._fd = -1  # someone closed our descriptor: start a new segment next time
            self._roll_at_ns = 0
        elif exc.errno == errno.EFBIG or written:
            self._roll_at_ns = 0  # a file-size limit (a short write): a new, empty segment may still fit
        self._back_off(now_ns, DROP_DISK)
        if count:
            self._count_drop_locked(DROP_DISK, now_ns)
        else:
            self._fast_until_ns = 0
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            log.debug("spool write failed: %s", exc)

    def _back_off(self, now_ns: int, reason: str) -> None:
        """Leave the disk alone for a moment; calls meanwhile are dropped for the same reason."""
        self._disk_retry_ns = now_ns + int(config.DISK_ERROR_BACKOFF_S * 1e9)
        self._backoff_reason = reason

    def _prepare(self, now_ns: int) -> int:
        """The slow path: honour a disk back-off, rotate or open, report drops, follow the quota. The
        fd; -1 if the call was dropped (counted); ``_NO_ROOM`` if the quota stops it."""
        backoff_ns = int(config.DISK_ERROR_BACKOFF_S * 1e9)
        if self._disk_retry_ns - backoff_ns <= now_ns < self._disk_retry_ns:
            self._count_drop_locked(self._backoff_reason, now_ns)
            return -1
        fd = self._fd
        if fd >= 0 and now_ns < self._roll_at_ns - self._max_age_ns:
            self._roll_at_ns = now_ns + self._max_age_ns  # the clock stepped back: restart the age
        if fd < 0 or self._size >= self._max_bytes or now_ns >= self._roll_at_ns:
            fd = self._roll(now_ns)
            if fd < 0:
                return -1
        if self._unreported and not self._write_drops(now_ns):
            return -1
        self._refresh_quota(now_ns)
        if self._size >= self._size_limit and self._size < self._max_bytes:
            self._refresh_quota(now_ns, force=True)  # the allowance is used up: is there more?
        if self._flags:
            return _NO_ROOM
        self._fast_from_ns = now_ns
        self._fast_until_ns = min(self._roll_at_ns, self._quota.check_ns)
        return fd

    def _roll(self, now_ns: int) -> int:
        """Seal the open segment (if any) and open the next one; -1 if that failed (counted)."""
        if self._fd >= 0:
            self.close_segment()
        try:
            return self._open_segment(now_ns)
        except (SpoolError, ValueError) as exc:
            self._back_off(now_ns, DROP_SPOOL)
            self._count_drop_locked(DROP_SPOOL, now_ns)
            if self.dropped[DROP_SPOOL] == 1:
                self._pending_warning = str(exc)
            return -1
        except OSError:
            self._back_off(now_ns, DROP_DISK)
            self._count_drop_locked(DROP_DISK, now_ns)
            return -1

    def _open_segment(self, now_ns: int) -> int:
        if self._paths is None:
            self._paths = ensure_spool(self.spool_dir)
        header = encode_header(
            SegmentHeader(pid=self._pid, index=self._index, created_ns=now_ns, nonce=self.nonce)
        )
        name = segment_name(self.nonce, self._pid, self._index)
        try:
            fd, final_path = create_segment(self._paths, name, header)
        except FileNotFoundError:
            self._paths = ensure_spool(self.spool_dir)  # the directories were removed
            fd, final_path = create_segment(self._paths, name, header)
        self._fd = fd
        self._size = len(header)
        self._bound()
        self._path = final_path
        self._index += 1
        self._roll_at_ns = now_ns + self._max_age_ns
        return fd

    def close_segment(self) -> None:
        """Seal and close the open segment, if any (rotation, or an orderly shutdown)."""
        fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        self._path = None
        self._fast_until_ns = 0
        self._written_before += self._size
        self._size = 0
        seq = self._seq
        frame = b""
        if self._unreported:
            frame = encode_frame(FRAME_DROPS, seq, msgpack.packb(self._unreported))
            seq += 1
        frame += encode_frame(FRAME_SEAL, seq, b"")
        try:
            written = os.write(fd, frame)
            if written == len(frame):
                self._other_frames += seq + 1 - self._seq
                self._seq = seq + 1
                self._unreported = {}
            else:
                os.ftruncate(fd, os.fstat(fd).st_size - written)  # a partial seal is torn: take it back
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock: the sender now sees the file as finished

    def close(self) -> None:
        """Seal this process's segment, writing any drop counts not yet reported (in a segment of their
        own if the current one refuses them). A close from inside a call (a handler) is ignored."""
        if self._pid != os.getpid():
            self._after_fork()
            return
        with self._exclusive() as mine:
            if not mine:
                return
            self.close_segment()
            if self._unreported:
                try:
                    self._open_segment(time.time_ns())
                except (SpoolError, OSError, ValueError):
                    return
                self.close_segment()
