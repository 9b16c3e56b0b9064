"""Batch assembly and request bodies. Pure.

An event is encoded once, by orjson, into a *stub*: its JSON object without the closing brace. A
request body is then one ``join`` per attempt, which adds every event's ``sentAt`` (refreshed on each
retry, as the server's clock-skew correction needs) and its closing brace::

    {"batch":[<stub>,"sentAt":"<t>"},<stub>,"sentAt":"<t>"}]}

so a retry never re-encodes an event, and the body's exact size is known before it is built.

The sender never holds a whole body: :func:`body_pieces` yields it in pieces of about 64 KiB, which the
gzip stream takes one at a time. A body is up to 4 MB, and an allocation that large is a fresh mapping
from the kernel each time, zero-filled page by page: joining the whole body cost more than the
compression itself (about 0.5 µs per benchmark event, against 0.1 µs). Pieces this small are reused
from the allocator's free lists.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Final

# The data plane refuses a decompressed body above this many bytes (its maxReqSizeInKB = 4000).
SERVER_MAX_BODY: Final = 4_096_000

_OPEN: Final = b'{"batch":['
_SENT_AT_KEY: Final = b',"sentAt":"'
_ISO_LEN: Final = len("2026-11-26T10:01:02.345Z")
# Bytes each event adds to the body beyond its stub: ,"sentAt":"<24>"} plus the comma between events.
PIECE_BYTES: Final = 64 * 1024  # see the module docstring
PER_EVENT_OVERHEAD: Final = len(_SENT_AT_KEY) + _ISO_LEN + len(b'"}') + 1
BODY_OVERHEAD: Final = len(_OPEN) + len(b"]}") - 1


def body_size(stub_bytes: int, count: int) -> int:
    """Exact size of the body holding ``count`` events whose stubs total ``stub_bytes``."""
    if count == 0:
        return len(_OPEN) + len(b"]}")
    return stub_bytes + count * PER_EVENT_OVERHEAD + BODY_OVERHEAD


def build_body(stubs: Sequence[bytes], sent_at: str) -> bytes:
    """The request body for these events, each stamped with ``sent_at``."""
    return b"".join(body_pieces(stubs, sent_at))


def body_pieces(stubs: Sequence[bytes], sent_at: str, piece_bytes: int = PIECE_BYTES) -> Iterator[bytes]:
    """The request body for these events, each stamped with ``sent_at``, in consecutive pieces: joined,
    they are :func:`build_body`'s bytes. Each piece but the two short ends (the body's opening, and the
    last event's close) holds whole events, about ``piece_bytes`` of stubs (one event at least), each
    made by one ``join`` and never copied again."""
    if not stubs:
        yield _OPEN + b"]}"
        return
    close = _SENT_AT_KEY + sent_at.encode("ascii") + b'"}'
    between = close + b","
    ends = list(accumulate(map(len, stubs)))  # stub bytes up to each event: the cuts fall by size
    count = len(stubs)
    yield _OPEN
    start = 0
    while start < count:
        before = ends[start - 1] if start else 0
        stop = max(start + 1, bisect_right(ends, before + piece_bytes, start))
        events = list(stubs[start:stop])
        if stop < count:
            events.append(b"")  # the join then ends with ``between``, ready for the next piece
        yield between.join(events)
        start = stop
    yield close + b"]}"


def stub_of(event_json: bytes) -> bytes:
    """An encoded event object without its closing brace (orjson output always ends with ``}``)."""
    return event_json[:-1]


def fits_alone(stub: bytes) -> bool:
    """Whether one event can ever be sent: its body alone is within the data plane's limit."""
    return body_size(len(stub), 1) <= SERVER_MAX_BODY


class Batch:
    """Events on their way to the data plane together: their stubs, and the body's exact size.

    ``id`` names it in the delivery book; ``created`` (the caller's clock) starts its linger time.
    """

    __slots__ = ("created", "id", "max_bytes", "max_events", "stub_bytes", "stubs")

    def __init__(self, batch_id: int, created: float, max_bytes: int, max_events: int) -> None:
        self.id = batch_id
        self.created = created
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.stubs: list[bytes] = []
        self.stub_bytes = 0

    def __repr__(self) -> str:
        return f"<Batch id={self.id} events={len(self.stubs)} bytes={self.size}>"

    @property
    def size(self) -> int:
        return body_size(self.stub_bytes, len(self.stubs))

    def has_room(self, stub_len: int) -> bool:
        """Whether one more event of this size fits within the batch's bounds."""
        count = len(self.stubs)
        return count < self.max_events and (
            count == 0 or body_size(self.stub_bytes + stub_len, count + 1) <= self.max_bytes
        )

    def add(self, stub: bytes) -> None:
        self.stubs.append(stub)
        self.stub_bytes += len(stub)

    def has_room_for(self, count: int, stub_bytes: int) -> bool:
        """Whether ``count`` more events, whose stubs total ``stub_bytes``, all fit: exactly when adding
        them one by one, each checked with :meth:`has_room`, would (the bounds only grow)."""
        total = len(self.stubs) + count
        return total <= self.max_events and (
            total == 1 or body_size(self.stub_bytes + stub_bytes, total) <= self.max_bytes
        )

    def extend(self, stubs: list[bytes], stub_bytes: int) -> None:
        """Add events that :meth:`has_room_for` said fit (``stub_bytes``: their stubs' total size)."""
        self.stubs += stubs
        self.stub_bytes += stub_bytes


def total_size(stubs: Sequence[bytes | None]) -> int | None:
    """The stubs' total size; None if one is missing (an unreadable record)."""
    try:
        return sum(map(len, stubs))  # type: ignore[arg-type]  # None raises: the rare case
    except TypeError:
        return None


def halves(count: int) -> tuple[range, range]:
    """The two halves of a batch of ``count`` events (for a 413 split or a 400 bisection)."""
    mid = count // 2
    return range(0, mid), range(mid, count)
