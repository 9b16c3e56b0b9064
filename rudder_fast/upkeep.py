"""The sender's care of the spool itself: the quota's publication and ``drop_oldest``, deleting settled
segments (durably, before the ledger forgets them), syncing the segments producers write
(``--fsync-interval``, :mod:`rudder_fast.durability`), sweeping ``tmp/``, and checking that the spool is
still private.

Each piece is called from the sender's main loop at its own pace; the decisions are made by pure
functions (:func:`rudder_fast.quota.sender_flags`, :meth:`rudder_fast.book.Book.settled`), the files
are touched here, always through descriptors the sender holds (a name may have been replaced since).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

from . import config, quota, safefile
from .counts import DROP_OLDEST
from .delivery import Recurring
from .durability import Syncer
from .intake import Intake
from .layout import SpoolPaths, check_private
from .tail import count_events, writer_alive

log = logging.getLogger("rudder_fast.sender")


class Upkeep:
    """The spool's housekeeping for one sender (see the module docstring)."""

    def __init__(self, paths: SpoolPaths, cfg: config.SenderConfig, intake: Intake) -> None:
        self.paths = paths
        self.cfg = cfg
        self.intake = intake
        self.control: quota.ControlFile | None = None
        self.rotate_until = 0.0
        self.oldest_deleted = Recurring(
            logging.WARNING, "times the oldest events were deleted over the quota"
        )
        self.syncer = Syncer(paths.segments, cfg.fsync_interval)

    def open_control(self) -> None:
        """Create the control file. A FIFO, directory or symlink in its place raises (the sender
        refuses to start); other trouble (a full disk) only means producers measure for themselves."""
        try:
            self.control = quota.ControlFile(self.paths.control)
        except safefile.NotRegularFile:
            raise
        except OSError as exc:
            log.error("cannot create the control file (%s): producers will measure the quota themselves", exc)

    def close(self) -> None:
        self.syncer.close()
        if self.control is not None:
            self.control.close()

    # -- durability ---------------------------------------------------------------------------------

    def follow_segments(self) -> None:
        """After a directory scan: the segments the syncer keeps durable are those the sender reads."""
        self.syncer.follow({name: seg.tail.fd for name, seg in self.intake.segments.items()})

    def before_commit(self) -> None:
        """Before the ledger is committed: segments deleted since the last commit stay deleted after a
        power cut (else one could come back with no ledger entry, and be sent again whole). Raises
        OSError: the commit waits."""
        self.syncer.sync_deletions()

    # -- the quota ----------------------------------------------------------------------------------

    def enforce_quota(self, usage: int, now: float) -> int:
        """Publish the quota's verdict for producers (``drop``), or make room (``drop_oldest``) and
        ask live producers to seal their segments. Returns the usage after any deletion."""
        control = self.control
        if control is None:
            return usage
        cfg = self.cfg
        drop_oldest = cfg.on_full == "drop_oldest"
        if cfg.quota_bytes and drop_oldest and usage >= cfg.quota_bytes:
            usage = self._drop_oldest(usage, int(cfg.quota_bytes * quota.RESUME_FRACTION))
        current = control.current
        flags, gen, self.rotate_until = quota.sender_flags(
            current,
            usage=usage,
            quota_bytes=cfg.quota_bytes,
            drop_oldest=drop_oldest,
            now=now,
            rotate_until=self.rotate_until,
        )
        was_over, over = bool(current.flags & quota.OVER_QUOTA), bool(flags & quota.OVER_QUOTA)
        if over and not was_over:
            log.warning(
                "spool over quota (%d of %d bytes): producers drop new events until it falls below %d%%",
                usage, cfg.quota_bytes, int(quota.RESUME_FRACTION * 100),
            )  # fmt: skip
        elif was_over and not over:
            log.warning(
                "spool back under quota (%d of %d bytes): producers write again", usage, cfg.quota_bytes
            )
        control.publish(
            quota.Control(
                flags=flags,
                rotate_gen=gen,
                quota_bytes=cfg.quota_bytes,
                usage_bytes=usage,
                updated_ns=time.time_ns(),  # at every scan: producers take a stale one as a frozen sender
                sender_pid=os.getpid(),
            )
        )
        return usage

    def _drop_oldest(self, usage: int, target: int) -> int:
        """Delete the oldest segments whose writer is gone and that no batch holds, until usage is at
        most ``target``; every event deleted is counted as dropped (``oldest``)."""
        lost = 0
        book = self.intake.book
        for seg in list(self.intake.segments.values()):
            if usage <= target:
                break
            tail = seg.tail
            if seg.track.unresolved:
                continue  # part of it is being delivered, or is in the open batch: keep it
            if not (tail.final or tail.writer_gone or not writer_alive(tail.fd)):
                continue  # its writer may still append
            try:
                size = tail.size()
            except OSError:
                continue
            events, drops = count_events(tail, seg.track.acked, seg.track.ahead)
            tail.unlink()
            self.syncer.deleted(seg.name)
            self.intake.remove(seg)
            book.counters.add_drops(drops)
            book.counters.add_drops({DROP_OLDEST: events})
            book.dirty = True
            lost += events
            usage -= max(0, size - seg.track.acked)
        if lost:
            self.oldest_deleted.note(f"{lost} events in the last deletion")
        return usage

    # -- settled segments, debris, privacy -----------------------------------------------------------

    def reap_settled(self) -> None:
        """Delete the segments read to their end, that will not change, with every byte resolved."""
        for seg in list(self.intake.segments.values()):
            if self.intake.settled(seg):
                seg.tail.unlink()
                self.syncer.deleted(seg.name)
                self.intake.remove(seg)

    def sweep_tmp(self) -> None:
        """Remove segments a producer died creating (between its open in tmp/ and the rename): old and
        unlocked. Anything but a producer's regular file is left alone."""
        cutoff = time.time() - config.TMP_MAX_AGE_S
        try:
            entries = list(os.scandir(self.paths.tmp))
        except OSError:
            return
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_mtime > cutoff or not stat.S_ISREG(st.st_mode):
                    continue
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

    def check_private(self) -> None:
        """Raise SpoolError if the spool stopped being private (see layout.check_private)."""
        check_private(self.paths)
