"""The spool's byte format: segment header, frames, and an incremental frame decoder.

How this works
--------------
A segment file is a header followed by frames, appended by exactly one writer process::

    header: magic 8s | version u16 | reserved u16 | pid u32 | index u32 | created_ns u64 |
            nonce 16s (ASCII) | crc32 u32                                        (48 bytes)
    frame:  sync u32 | crc32 u32 | len u32 | type u8 | 3 reserved | seq u64 | payload[len]

All integers are little-endian. A frame's ``crc32`` (CRC-32) covers every byte after it (``len``, ``type``,
the reserved bytes, ``seq`` and the payload), so a frame is only accepted whole and unaltered; keeping
the covered bytes contiguous lets the writer compute it in one call. ``len`` is bounded by
``MAX_PAYLOAD`` before it is trusted, so a corrupt length can never make the reader wait for gigabytes.

Because each file has one writer and every frame is one ``write(2)``, the only torn frame a healthy
spool can hold is the last one of a file whose writer was killed mid-write. Everything else that fails
to parse is corruption (a bad disk, a stray file, a zero-filled page after a power loss): the decoder
resynchronises on the next sync word and counts the bytes it skipped. It never raises on any input.

The sender's hot path reads runs of event frames with :meth:`FrameDecoder.take_events`, which returns
the run a column at a time (:class:`EventRun`), with no object per frame. It stops before anything
else, which ``next()`` then returns: the two together return exactly what ``next()`` alone would. Its
loop runs in C where the package's optional extension was built (``rudder_fast/_speedups.c``: 0.15 µs
per benchmark event where the Python loop takes 0.5), and in Python otherwise
(:meth:`FrameDecoder.take_events_in_python`, the reference: ``struct.unpack_from``, one CRC call over
the covered bytes, a slice of the payload). The tests hold the two to the same results on any bytes.

The checksum is computed by :func:`crc32`: zlib-ng's where the ``zlib-ng`` package can be imported (a
dependency), the standard library's zlib otherwise. Both compute the same CRC-32, so either reads what
the other wrote; zlib-ng's is about three times as fast on a frame of a few hundred bytes (zlib's folds
a byte or two per nanosecond, zlib-ng's uses carry-less multiplication). zlib's CRC was a quarter of
this decoder's time per event, and a few percent of ``emit.track``'s.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import msgpack

# take_events(buf, pos, limit, base, crc32) -> (seqs, payloads, ends, pos) of rudder_fast/_speedups.c
TakeEvents = Callable[[bytes, int, int, int, "Crc32"], tuple[list[int], list[bytes], list[int], int]]


def _native_take_events() -> TakeEvents | None:
    try:
        from ._speedups import take_events
    except ImportError:  # the optional C extension was not built: the Python loop does the same
        return None
    return take_events


# FrameDecoder.take_events's loop in C, or None where the extension is missing. A module attribute, so
# that the tests can run the Python loop where the C one is built.
native_take_events = _native_take_events()


class Crc32(Protocol):
    """zlib's ``crc32(data, value=0)``: the CRC-32 of ``data`` continued from ``value``."""

    def __call__(self, data: bytes, value: int = 0, /) -> int: ...


def _crc32_function() -> Crc32:
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # pragma: no cover - a dependency; zlib where it cannot be imported
        return zlib.crc32
    return zlib_ng.crc32


crc32: Final = _crc32_function()  # see the module docstring
CRC32_IMPLEMENTATION: Final = "zlib" if crc32 is zlib.crc32 else "zlib-ng"

MAGIC: Final = b"RFSPOOL\x00"
VERSION: Final = 1
HEADER = struct.Struct("<8sHHIIQ16sI")
HEADER_SIZE: Final = HEADER.size  # 48
NONCE_LEN: Final = 16

SYNC: Final = 0x1CA92EF5
SYNC_BYTES: Final = struct.pack("<I", SYNC)
FRAME_HEAD = struct.Struct("<IIIB3xQ")  # sync, crc, len, type, seq
FRAME_HEAD_SIZE: Final = FRAME_HEAD.size  # 24
FRAME_PREFIX = struct.Struct("<II")  # sync, crc: the part of the head the CRC does not cover
FRAME_META = struct.Struct("<IB3xQ")  # len, type, seq: the part it does

# The largest payload a frame may carry. The data plane refuses request bodies above 4,096,000
# bytes, so no single event can ever be delivered above that; the record is smaller than its JSON.
MAX_PAYLOAD: Final = 4_000_000

FRAME_EVENT: Final = 1
FRAME_DROPS: Final = 2  # payload: msgpack {reason: count} of events dropped since the last frame
FRAME_SEAL: Final = 3  # the writer closed the file cleanly; nothing follows
_KNOWN_TYPES: Final = frozenset((FRAME_EVENT, FRAME_DROPS, FRAME_SEAL))


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    pid: int
    index: int
    created_ns: int
    nonce: str


def encode_header(header: SegmentHeader) -> bytes:
    nonce = header.nonce.encode("ascii")
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} ASCII characters")
    body = HEADER.pack(MAGIC, VERSION, 0, header.pid, header.index, header.created_ns, nonce, 0)[:-4]
    return body + struct.pack("<I", crc32(body))


def decode_header(data: bytes) -> SegmentHeader | None:
    """The header at the start of ``data``, or None if it is short, foreign or corrupt."""
    if len(data) < HEADER_SIZE:
        return None
    magic, version, _, pid, index, created_ns, nonce, crc = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or crc32(data[: HEADER_SIZE - 4]) != crc:
        return None
    try:
        text = nonce.decode("ascii")
    except UnicodeDecodeError:
        return None
    return SegmentHeader(pid=pid, index=index, created_ns=created_ns, nonce=text)


def decode_drops(payload: bytes) -> dict[str, int]:
    """A drop-marker frame's counts ({reason: events dropped}); empty if the payload is not one."""
    try:
        counts = msgpack.unpackb(payload)
    except Exception:  # noqa: BLE001 - msgpack raises a dozen types for a damaged payload: none is kept
        return {}
    if not isinstance(counts, dict):
        return {}
    return {k: v for k, v in counts.items() if isinstance(k, str) and isinstance(v, int) and v >= 0}


def encode_frame(frame_type: int, seq: int, payload: bytes) -> bytes:
    """One complete frame. The producer's hot path inlines the same two lines."""
    body = FRAME_META.pack(len(payload), frame_type, seq) + payload
    return FRAME_PREFIX.pack(SYNC, crc32(body)) + body


class Frame:
    """A whole, checked frame. ``offset``/``end`` are positions in the decoded stream.

    A plain slotted class rather than a frozen dataclass: the sender builds one per event, and a frozen
    dataclass's ``__init__`` (object.__setattr__ per field) costs four times as much.
    """

    __slots__ = ("end", "offset", "payload", "seq", "type")

    def __init__(self, type: int, seq: int, payload: bytes, offset: int, end: int) -> None:
        self.type = type
        self.seq = seq
        self.payload = payload
        self.offset = offset
        self.end = end

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.type, self.seq, self.payload, self.offset, self.end) == (
            other.type, other.seq, other.payload, other.offset, other.end,
        )  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.type, self.seq, self.payload, self.offset, self.end))

    def __repr__(self) -> str:
        return (
            f"Frame(type={self.type}, seq={self.seq}, payload={self.payload!r}, offset={self.offset}, "
            f"end={self.end})"
        )


@dataclass(frozen=True, slots=True)
class Skip:
    """``length`` bytes from ``offset`` were not a valid frame and were skipped."""

    offset: int
    length: int
    reason: str  # "corrupt" or "torn"


class NeedData:
    """The buffered bytes end inside a frame: feed more, or call ``finish()`` if none will come."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

Item = Frame | Skip | NeedData


class EventRun:
    """Event frames as :meth:`FrameDecoder.take_events` returns them, a column each: their ``seqs``,
    ``payloads``, and ``ends`` (stream positions). Iterating gives ``(seq, payload, end)`` per frame."""

    __slots__ = ("ends", "payloads", "seqs")

    def __init__(self, seqs: Sequence[int], payloads: Sequence[bytes], ends: Sequence[int]) -> None:
        self.seqs = seqs
        self.payloads = payloads
        self.ends = ends

    @classmethod
    def of(cls, frames: Iterable[tuple[int, bytes, int]]) -> EventRun:
        """A run from ``(seq, payload, end)`` tuples."""
        listed = list(frames)
        if not listed:
            return cls((), (), ())
        seqs, payloads, ends = zip(*listed, strict=True)
        return cls(seqs, payloads, ends)

    def __len__(self) -> int:
        return len(self.seqs)

    def __iter__(self) -> Iterator[tuple[int, bytes, int]]:
        return zip(self.seqs, self.payloads, self.ends, strict=True)

    def __repr__(self) -> str:
        return f"EventRun({list(self)!r})"


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)``, then call ``next()`` until it returns ``NEED_DATA``.

    ``offset`` is the stream position of the first byte not yet consumed: everything before it has been
    returned as a ``Frame`` or a ``Skip``. Start it at the file position of the first frame (just after
    the header) and positions in every item are file offsets.

    While more bytes may come, an incomplete frame at the end means "wait" (``NEED_DATA``). Once the
    caller knows none will (the writer is gone), ``finish()`` makes the decoder treat an incomplete frame
    as torn: it skips to the next sync word, still returning every whole frame that follows.
    """

    __slots__ = ("_buf", "_final", "_pos", "offset", "skipped_bytes")

    def __init__(self, offset: int = 0) -> None:
        self._buf = b""
        self._pos = 0  # index in _buf of the byte at self.offset
        self._final = False
        self.offset = offset
        self.skipped_bytes = 0

    def __repr__(self) -> str:
        return f"<FrameDecoder offset={self.offset} buffered={self.buffered} final={self._final}>"

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        # Readers feed large chunks and consume nearly all of each before the next: keep only the
        # unconsumed tail (usually a partial frame, or nothing, in which case no copy is made).
        if self._pos >= len(self._buf):
            self._buf = bytes(data)
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def finish(self) -> None:
        """No more bytes will come: an incomplete frame at the end is now a torn tail to skip."""
        self._final = True

    def rewind(self, offset: int) -> None:
        """Forget the buffered bytes and start again at stream position ``offset`` (a frame boundary):
        for a reader that must re-read bytes it suspects changed under it."""
        self._buf = b""
        self._pos = 0
        self._final = False
        self.offset = offset

    def skip_unread(self, length: int, reason: str) -> Skip | None:
        """Account ``length`` bytes at the current position that were never fed (a foreign file)."""
        if length <= 0:
            return None
        skip = Skip(offset=self.offset, length=length, reason=reason)
        self.offset += length
        self.skipped_bytes += length
        return skip

    def skip_rest(self, reason: str) -> Skip | None:
        """Discard everything buffered as one counted skip (a file that is not a segment at all)."""
        left = self.buffered
        if not left:
            return None
        skip = Skip(offset=self.offset, length=left, reason=reason)
        self._buf = b""
        self._pos = 0
        self.offset += left
        self.skipped_bytes += left
        return skip

    def next(self) -> Item:
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail == 0:
            return NEED_DATA
        if avail < FRAME_HEAD_SIZE:
            if self._final:
                return self._skip_to_sync(pos + 1, "torn")
            if not SYNC_BYTES.startswith(buf[pos : pos + 4]):
                return self._skip_to_sync(pos + 1, "corrupt")
            return NEED_DATA
        sync, crc, n, frame_type, seq = FRAME_HEAD.unpack_from(buf, pos)
        if sync != SYNC or n > MAX_PAYLOAD or frame_type not in _KNOWN_TYPES:
            return self._skip_to_sync(pos + 1, "corrupt")
        end = pos + FRAME_HEAD_SIZE + n
        if end > len(buf):
            if self._final:
                return self._skip_to_sync(pos + 1, "torn")
            return NEED_DATA
        if crc32(buf[pos + 8 : end]) != crc:
            return self._skip_to_sync(pos + 1, "corrupt")
        start = self.offset
        self._pos = end
        self.offset = start + FRAME_HEAD_SIZE + n
        payload = buf[pos + FRAME_HEAD_SIZE : end]
        return Frame(type=frame_type, seq=seq, payload=payload, offset=start, end=self.offset)

    def take_events(self, limit: int) -> EventRun:
        """Up to ``limit`` whole, checked event frames from the current position: the frames ``next()``
        would return, without a :class:`Frame` each.

        It stops before anything that is not a whole, valid event frame (another frame type, bytes to
        skip, an incomplete frame, the end of the buffer): ``next()`` returns that. In C where the
        extension was built (see the module docstring), else :meth:`take_events_in_python`.
        """
        take = native_take_events
        if take is None:
            return self.take_events_in_python(limit)
        pos = self._pos
        base = self.offset - pos  # the stream position of _buf[0]
        seqs, payloads, ends, stop = take(self._buf, pos, limit, base, crc32)
        self._pos = stop
        self.offset = base + stop
        return EventRun(seqs, payloads, ends)

    def take_events_in_python(self, limit: int) -> EventRun:
        """:meth:`take_events` in Python: the reference, and the way where the C extension is missing."""
        buf = self._buf
        pos = self._pos
        size = len(buf)
        base = self.offset - pos  # the stream position of buf[0]
        seqs: list[int] = []
        payloads: list[bytes] = []
        ends: list[int] = []
        unpack = FRAME_HEAD.unpack_from
        check = crc32
        head, sync_word, event, max_payload = FRAME_HEAD_SIZE, SYNC, FRAME_EVENT, MAX_PAYLOAD  # locals
        last = size - head  # the last position a frame's head fits at
        for _ in range(limit):
            if pos > last:
                break
            sync, crc, n, frame_type, seq = unpack(buf, pos)
            start = pos + head
            end = start + n
            if sync != sync_word or frame_type != event or n > max_payload or end > size:
                break
            if check(buf[pos + 8 : end]) != crc:
                break
            seqs.append(seq)
            payloads.append(buf[start:end])
            ends.append(base + end)
            pos = end
        self._pos = pos
        self.offset = base + pos
        return EventRun(seqs, payloads, ends)

    def unread(self, offset: int) -> None:
        """Step back to stream position ``offset``, the start of a frame returned since the last
        ``feed``: the frames from there are returned again (a reader that took more than it could
        use)."""
        back = self.offset - offset
        if not 0 <= back <= self._pos:
            raise ValueError(f"cannot step back to {offset}: the buffer starts at {self.offset - self._pos}")
        self._pos -= back
        self.offset = offset

    def _skip_to_sync(self, search_from: int, reason: str) -> Skip:
        buf = self._buf
        found = buf.find(SYNC_BYTES, search_from)
        if found < 0:
            found = len(buf)
            if not self._final:
                # Keep a trailing partial sync word: its other bytes may still be on their way.
                for keep in (3, 2, 1):
                    if len(buf) - keep >= search_from and SYNC_BYTES.startswith(buf[-keep:]):
                        found = len(buf) - keep
                        break
        length = found - self._pos
        skip = Skip(offset=self.offset, length=length, reason=reason)
        self._pos = found
        self.offset += length
        self.skipped_bytes += length
        return skip
