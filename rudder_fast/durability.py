"""A bound on what a power cut loses: the sender fdatasyncs the segments producers write.

Producers never fsync (it would cost each call milliseconds): what they write stays in the page cache
until the kernel writes it back (after about 30 s on Linux by default), and a power cut loses it. So the
sender, which tails every segment anyway, does it for them. Every ``--fsync-interval`` seconds a thread
of its own (:class:`Syncer`) fdatasyncs each segment that grew since its last sync, then fsyncs
``segments/`` if a segment appeared there since the last pass (a new file's name is durable only once
its directory is synced). An event accepted more than one interval (plus one pass) before a cut is on
the disk after it. Producers never wait for this: fdatasync writes dirty pages back while their writes
go on (only a file system that needs stable pages makes a write to a page under writeback wait).

The thread works on duplicates of the sender's own descriptors, handed over by the main loop
(:meth:`Syncer.follow`), so a segment replaced by name is never synced in its stead. A descriptor is
never closed while a pass may use it: a segment that leaves the directory scan is closed by the thread
after its pass, and a segment the sender deletes is closed at once, once any pass in progress is over
(:meth:`Syncer.deleted`): an open descriptor keeps a deleted file's blocks, and on a full disk the
ledger commit that follows the deletion needs them.

Deletions go the other way: before the ledger forgets a deleted segment, the deletion must be durable
(:meth:`Syncer.sync_deletions`), or a cut could bring the file back with no ledger entry, and every one
of its events would be sent again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("rudder_fast.sender")


class _Followed:
    __slots__ = ("fd", "synced_size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.synced_size = -1  # never synced by this sender


class Syncer:
    """Syncs the followed segments every ``interval`` seconds (see the module docstring); ``interval``
    0 syncs nothing but deletions."""

    def __init__(self, segments_dir: Path, interval: float) -> None:
        self.segments_dir = segments_dir
        self.interval = interval
        self.passes = 0
        self.file_syncs = 0
        self.dir_syncs = 0
        self._lock = threading.Lock()
        self._pass_over = threading.Condition(self._lock)
        self._in_pass = False  # the thread is syncing descriptors it took from _followed
        self._followed: dict[str, _Followed] = {}
        self._gone: list[int] = []  # descriptors to close after the current pass
        self._new_names = False  # a segment appeared since the last directory sync
        self._deleted = False  # a segment was deleted since the last directory sync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def __repr__(self) -> str:
        return (
            f"<Syncer every {self.interval:g} s followed={len(self._followed)} passes={self.passes} "
            f"file_syncs={self.file_syncs} dir_syncs={self.dir_syncs}>"
        )

    def start(self) -> None:
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rudder-fast-fsync", daemon=True)
            self._thread.start()

    def follow(self, segments: Mapping[str, int]) -> None:
        """The segments the sender reads now, by name, with the descriptor it reads each through (main
        thread, after each directory scan)."""
        if self.interval <= 0:
            return
        with self._lock:
            for name in [n for n in self._followed if n not in segments]:
                self._gone.append(self._followed.pop(name).fd)
            for name, segment_fd in segments.items():
                if name not in self._followed:
                    try:
                        fd = os.dup(segment_fd)
                    except OSError:
                        continue  # out of descriptors: synced by the kernel's own writeback instead
                    self._followed[name] = _Followed(fd)
                    self._new_names = True

    def deleted(self, name: str) -> None:
        """The sender deleted segment ``name`` (main thread): the next ledger commit must sync the
        deletion first, and its descriptor is closed now (after the pass in progress, if one is), so
        that the file's space is free at once."""
        self._deleted = True
        with self._pass_over:
            item = self._followed.pop(name, None)
            if item is None:
                return
            while self._in_pass:
                self._pass_over.wait()
        with contextlib.suppress(OSError):  # closed whatever close() says (EIO, EINTR), as in a pass
            os.close(item.fd)

    def sync_deletions(self) -> None:
        """Make the deletions since the last call durable (main thread, before a ledger commit that
        forgets the deleted segments). Raises OSError: the caller does not commit then."""
        if not self._deleted:
            return
        self._sync_directory()
        self._deleted = False

    def close(self) -> None:
        """Stop the thread after a last pass, and close every descriptor it holds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            fds = [f.fd for f in self._followed.values()] + self._gone
            self._followed.clear()
            self._gone = []
        for fd in fds:
            os.close(fd)

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync_pass()
        self.sync_pass()  # what was written since the last pass, as the sender stops

    def sync_pass(self) -> None:
        """fdatasync every followed segment that grew since its last sync, then segments/ if a segment
        appeared. Failures are logged once until a pass succeeds again; the next pass tries again."""
        with self._lock:
            gone, self._gone = self._gone, []
            followed = list(self._followed.values())
            new_names, self._new_names = self._new_names, False
            self._in_pass = True
        try:
            for fd in gone:
                with contextlib.suppress(OSError):  # closed whatever close() says (EIO, EINTR)
                    os.close(fd)
            self._sync(followed, new_names)
        finally:
            with self._pass_over:
                self._in_pass = False
                self._pass_over.notify_all()

    def _sync(self, followed: list[_Followed], new_names: bool) -> None:
        try:
            for item in followed:
                size = os.fstat(item.fd).st_size
                if size != item.synced_size:
                    os.fdatasync(item.fd)
                    item.synced_size = size
                    self.file_syncs += 1
            if new_names:
                self._sync_directory()
        except OSError as exc:
            if new_names:
                self._new_names = True  # (a set flag is only ever cleared by this thread)
            if not self._failing:
                log.error("cannot fsync the spool's segments (%s): a power cut may lose more", exc)
                self._failing = True
            return
        if self._failing:
            log.warning("the spool's segments are fsynced again")
            self._failing = False
        self.passes += 1

    def _sync_directory(self) -> None:
        fd = os.open(self.segments_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.dir_syncs += 1
