"""The reader side of the spool: discover segments, tell live writers from dead ones, read frames.

How this works
--------------
A segment's writer holds ``flock(LOCK_EX)`` on it for as long as it may still append. The reader probes
that lock without blocking: if it can take a shared lock, the writer is gone (exited, killed, or sealed
and closed the file) and the file will never grow again. This is immune to pid reuse and to pid
namespaces, unlike checking the pid the header records.

The order matters when deciding that a tail is torn: probe the lock first, *then* read to the end of
the file, then tell the decoder no more bytes will come. Reading first could miss the writer's last
frame written between the read and its death.

Files may vanish while being read (the sender deletes finished segments; an operator may clean up):
every reader tolerates that.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import config, counts
from .framing import (
    FRAME_DROPS,
    FRAME_EVENT,
    FRAME_SEAL,
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    NeedData,
    SegmentHeader,
    Skip,
    decode_drops,
    decode_header,
)
from .layout import SEGMENT_SUFFIX


def list_segments(segments_dir: Path) -> list[Path]:
    """The segment files present now, oldest first (by inode change time, then name)."""
    return [path for path, _ in scan_segments(segments_dir)]


def scan_segments(segments_dir: Path) -> list[tuple[Path, int]]:
    """(path, size) of the segment files present now, oldest first. One directory read, one stat each."""
    found: list[tuple[int, str, Path, int]] = []
    try:
        with os.scandir(segments_dir) as entries:
            for entry in entries:
                if not entry.name.endswith(SEGMENT_SUFFIX):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                found.append((st.st_ctime_ns, entry.name, Path(entry.path), st.st_size))
    except FileNotFoundError:
        return []
    found.sort()
    return [(p, size) for _, _, p, size in found]


def writer_alive(fd: int) -> bool:
    """True if some process holds the segment's exclusive lock (its writer may still append)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-(\d+)-(\d+)\.seg$")


@dataclass(slots=True)
class SegmentTail:
    """Incremental reader of one segment, from a starting offset (the ledger's acknowledged offset).

    A file whose header does not decode is still read as a segment when its name is one a producer
    makes (``<nonce>-<pid>-<index>.seg``): the nonce comes from the name and the decoder resynchronises
    on the frames after the header. Any other file in segments/ is foreign: it is never buffered, only
    measured, and skipped whole once nobody holds a lock on it.
    """

    path: Path
    fd: int
    header: SegmentHeader | None
    decoder: FrameDecoder
    read_pos: int
    name_nonce: str | None = None
    # The file's states, in order: ``writer_gone`` (its lock is free, or a seal frame was read: it will
    # not change again), ``final`` (and every byte of it has been read), ``done`` (and decoded).
    writer_gone: bool = False
    final: bool = False

    @classmethod
    def open(cls, path: Path, start_offset: int = 0) -> SegmentTail | None:
        """Open a segment, or None if it vanished or is not a regular file (replaced meanwhile by a
        symlink or a FIFO, which must neither be followed nor block the reader)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return None
            head = os.pread(fd, HEADER_SIZE, 0)
        except OSError:
            os.close(fd)
            return None
        return cls._from_fd(path, fd, head, start_offset)

    def duplicate(self, start_offset: int) -> SegmentTail:
        """A second, independent reader of the same open file from ``start_offset``: the file is never
        reopened by name (the name may have been replaced meanwhile)."""
        return self._from_fd(self.path, os.dup(self.fd), os.pread(self.fd, HEADER_SIZE, 0), start_offset)

    @classmethod
    def _from_fd(cls, path: Path, fd: int, head: bytes, start_offset: int) -> SegmentTail:
        header = decode_header(head)
        named = _SEGMENT_NAME.match(path.name)
        if header is not None or named is not None:
            start = max(start_offset, HEADER_SIZE)
        else:
            start = max(start_offset, 0)
        return cls(
            path=path,
            fd=fd,
            header=header,
            decoder=FrameDecoder(start),
            read_pos=start,
            name_nonce=named.group(1) if named else None,
        )

    @property
    def foreign(self) -> bool:
        """Not a segment a producer wrote: no valid header and not a producer's file name."""
        return self.header is None and self.name_nonce is None

    @property
    def nonce(self) -> str:
        if self.header is not None:
            return self.header.nonce
        return self.name_nonce or self.path.name.split("-", 1)[0]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def unlink(self) -> None:
        """Delete the file this tail reads, if its name still names it (the name may have been
        replaced by another file, which is never deleted unread), and close the tail."""
        try:
            named = os.lstat(self.path)
            opened = os.fstat(self.fd)
            if (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            self.close()

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def rewind(self, offset: int) -> None:
        """Re-read from ``offset`` (a frame boundary): the buffered bytes may be stale."""
        self.decoder.rewind(offset)
        self.read_pos = offset

    def read_at_most(self, max_bytes: int) -> int:
        """Read up to ``max_bytes`` new bytes into the decoder, without probing the writer: 0 at the
        end of the file (or if it cannot be read now)."""
        try:
            data = os.pread(self.fd, max_bytes, self.read_pos)
        except OSError:
            return 0
        if data:
            self.read_pos += len(data)
            self.decoder.feed(data)
        return len(data)

    def read_more(self, max_bytes: int = config.READ_CHUNK) -> int:
        """Read up to ``max_bytes`` new bytes into the decoder; returns how many were read.

        When nothing new is there and the writer is gone, marks the tail final (the decoder then
        treats an incomplete frame as torn).
        """
        if self.final:
            return 0
        if self.foreign:
            return self._measure_foreign()
        data = os.pread(self.fd, max_bytes, self.read_pos)
        if data:
            self.read_pos += len(data)
            self.decoder.feed(data)
            return len(data)
        if not self.writer_gone:
            if writer_alive(self.fd):
                return 0
            self.writer_gone = True
            # A writer rolls back a short write (ftruncate) and writes again at the same place: bytes
            # buffered before that are stale. The file is final now: read its tail afresh.
            if self.decoder.buffered:
                self.rewind(self.decoder.offset)
            return self.read_more(max_bytes)
        self.final = True
        self.decoder.finish()
        return 0

    def _measure_foreign(self) -> int:
        if not writer_alive(self.fd):
            self.read_pos = max(self.read_pos, self.size())
            self.writer_gone = self.final = True
        return 0

    def frames(self) -> Iterator[Frame | Skip]:
        """Every whole frame or counted skip the buffered bytes allow, in file order."""
        decoder = self.decoder
        if self.foreign:
            if self.final:
                skip = decoder.skip_unread(self.read_pos - decoder.offset, "corrupt")
                if skip is not None:
                    yield skip
            return
        while True:
            item = decoder.next()
            if isinstance(item, NeedData):
                return
            if isinstance(item, Frame) and item.type == FRAME_SEAL:
                self.writer_gone = True  # nothing is appended after a seal
            yield item

    @property
    def done(self) -> bool:
        """Final and fully decoded: the segment will yield nothing more."""
        if self.foreign:
            return self.final and self.decoder.offset >= self.read_pos
        return self.final and self.decoder.buffered == 0


def read_whole(path: Path, start_offset: int = 0) -> tuple[SegmentTail | None, list[Frame | Skip]]:
    """Everything currently readable in a segment (waiting on nothing): for inspect and tests."""
    tail = SegmentTail.open(path, start_offset)
    if tail is None:
        return None, []
    return tail, read_all(tail)


def read_all(tail: SegmentTail) -> list[Frame | Skip]:
    """Every frame and skip readable from ``tail``'s position now (waiting on nothing)."""
    items: list[Frame | Skip] = []
    while True:
        got = tail.read_more()
        items.extend(tail.frames())
        if not got:
            if tail.final:
                items.extend(tail.frames())
            break
    return items


def in_ranges(offset: int, ranges: list[list[int]] | None) -> bool:
    """Whether ``offset`` falls in one of the [start, end) ranges (the ledger's resolved-ahead ones)."""
    return bool(ranges) and any(start <= offset < end for start, end in ranges or ())


def walk(tail: SegmentTail, resolved: list[list[int]] | None) -> Iterator[tuple[Frame | Skip, bool]]:
    """The one walk over a segment's unacknowledged part, waiting on nothing: every frame and skip from
    ``tail``'s position, each with whether it lies in a range the ledger records as resolved already
    (acknowledged out of order). The sender's own reading is incremental; this serves ``status``,
    ``inspect`` and ``drop_oldest``."""
    for item in read_all(tail):
        yield item, in_ranges(item.offset, resolved)


def count_events(
    segment: SegmentTail, start_offset: int, skip_ranges: list[list[int]] | None = None
) -> tuple[int, dict[str, int]]:
    """Events in a finished segment from an offset (outside ranges already resolved), and the drop
    counts its markers carry. Reads through the open ``segment``'s file, never by name."""
    tail = segment.duplicate(start_offset)
    events = 0
    drops: dict[str, int] = {}
    try:
        for item, done in walk(tail, skip_ranges):
            if isinstance(item, Frame) and not done:
                if item.type == FRAME_EVENT:
                    events += 1
                elif item.type == FRAME_DROPS:
                    counts.add(drops, decode_drops(item.payload))
    finally:
        tail.close()
    return events, drops
