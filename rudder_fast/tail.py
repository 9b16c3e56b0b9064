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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .framing import (
    FRAME_SEAL,
    HEADER_SIZE,
    NEED_DATA,
    Frame,
    FrameDecoder,
    SegmentHeader,
    Skip,
    decode_header,
)
from .layout import SEGMENT_SUFFIX

READ_CHUNK = 1 << 20


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


@dataclass(slots=True)
class SegmentTail:
    """Incremental reader of one segment, from a starting offset (the ledger's acknowledged offset)."""

    path: Path
    fd: int
    header: SegmentHeader | None
    decoder: FrameDecoder
    read_pos: int
    sealed: bool = False
    final: bool = False  # the writer is gone and every byte has been read

    @classmethod
    def open(cls, path: Path, start_offset: int = 0) -> SegmentTail | None:
        """Open a segment, or None if it vanished. A foreign or corrupt header reads as all garbage."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (FileNotFoundError, OSError):
            return None
        head = os.pread(fd, HEADER_SIZE, 0)
        header = decode_header(head)
        start = max(start_offset, HEADER_SIZE) if header is not None else max(start_offset, 0)
        return cls(path=path, fd=fd, header=header, decoder=FrameDecoder(start), read_pos=start)

    @property
    def nonce(self) -> str:
        if self.header is not None:
            return self.header.nonce
        return self.path.name.split("-", 1)[0]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read_more(self, max_bytes: int = READ_CHUNK) -> int:
        """Read up to ``max_bytes`` new bytes into the decoder; returns how many were read.

        When nothing new is there and the writer is gone, marks the tail final (the decoder then
        treats an incomplete frame as torn).
        """
        if self.final:
            return 0
        data = os.pread(self.fd, max_bytes, self.read_pos)
        if data:
            self.read_pos += len(data)
            self.decoder.feed(data)
            return len(data)
        if self.sealed or not writer_alive(self.fd):
            # Dead writer: one last read catches a frame written just before it died.
            data = os.pread(self.fd, max_bytes, self.read_pos)
            if data:
                self.read_pos += len(data)
                self.decoder.feed(data)
                return len(data)
            self.final = True
            self.decoder.finish()
        return 0

    def frames(self) -> Iterator[Frame | Skip]:
        """Every whole frame or counted skip the buffered bytes allow, in file order."""
        if self.header is None:
            # Not a segment of ours: nothing in it can be trusted, skip it whole once it is final.
            if self.final and self.decoder.buffered:
                yield from self._skip_all()
            return
        decoder = self.decoder
        while True:
            item = decoder.next()
            if item is NEED_DATA:
                return
            assert isinstance(item, (Frame, Skip))
            if isinstance(item, Frame) and item.type == FRAME_SEAL:
                self.sealed = True
            yield item

    def _skip_all(self) -> Iterator[Skip]:
        skip = self.decoder.skip_rest("corrupt")
        if skip is not None:
            yield skip

    @property
    def done(self) -> bool:
        """Final and fully decoded: the segment will yield nothing more."""
        return self.final and self.decoder.buffered == 0


def read_whole(path: Path, start_offset: int = 0) -> tuple[SegmentTail | None, list[Frame | Skip]]:
    """Everything currently readable in a segment (waiting on nothing): for inspect and tests."""
    tail = SegmentTail.open(path, start_offset)
    if tail is None:
        return None, []
    items: list[Frame | Skip] = []
    while True:
        got = tail.read_more()
        items.extend(tail.frames())
        if not got:
            if tail.final:
                items.extend(tail.frames())
            break
    return tail, items


def count_events(path: Path, start_offset: int) -> tuple[int, dict[str, int]]:
    """Events in a finished segment from an offset, and the drop counts its markers carry."""
    from .framing import FRAME_DROPS, FRAME_EVENT, decode_drops

    tail, items = read_whole(path, start_offset)
    if tail is not None:
        tail.close()
    events = 0
    drops: dict[str, int] = {}
    for item in items:
        if isinstance(item, Frame):
            if item.type == FRAME_EVENT:
                events += 1
            elif item.type == FRAME_DROPS:
                for reason, n in decode_drops(item.payload).items():
                    drops[reason] = drops.get(reason, 0) + n
    return events, drops
