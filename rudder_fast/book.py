"""The delivery book: what the sender has read, batched and had resolved, per segment. Pure (sans-I/O).

How this works
--------------
The book is the heart of the at-least-once guarantee and owns nothing but bookkeeping: no files, no
sockets, no clock (the caller passes ``now``), no threads. The sender's I/O shell tells it what happened
("these bytes of this segment were read into that batch", "this batch was acknowledged", "restart from
this ledger") and asks it what to do ("what may the ledger record now", "may this segment be deleted").

Per segment, a :class:`Track` holds:

* ``acked``: every byte before it is resolved (delivered, quarantined, or skipped as torn or corrupt);
* ``chunks``: the ranges read since ``acked``, contiguous and in file order. A chunk is either resolved
  or waits for the one batch that holds its events. ``acked`` only advances over a prefix of resolved
  chunks, so an event is never counted done before it is;
* ``ahead``: ranges past ``acked`` that were resolved before a restart (a later batch acknowledged while
  an earlier one was still being retried). Their items are resolved again on sight, not resent.

What the ledger records (:meth:`Book.ledger`) is, per segment, ``acked`` and the resolved ranges beyond
it: after a crash, only the ranges of batches that were in flight are read and sent again. Counters
(sent, rejected, skipped bytes, drops; per producer too) move only when their bytes become part of
``acked``, so offsets and counters always describe the same moment.

A segment may be deleted once its file will not change again and nothing of it is unresolved
(:meth:`Book.settled`); the I/O shell, which knows about files, decides the first half.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Final

from .counts import Counters
from .ledger import LedgerState

Ranges = list[list[int]]  # [start, end) pairs, sorted, not overlapping


class Chunk:
    """A contiguous range of one segment, resolved when its batch is (or at once, with no batch)."""

    __slots__ = ("batch", "done", "drops", "end", "events", "rejected", "skipped", "start")

    def __init__(self, batch: int | None, start: int, end: int, done: bool = False) -> None:
        self.batch = batch
        self.start = start
        self.end = end
        self.done = done
        self.events = 0  # events in the range (sent, quarantined, or already delivered before a restart)
        self.rejected = 0  # quarantined without a batch (too large to send)
        self.skipped = 0  # bytes skipped as torn or corrupt
        self.drops: dict[str, int] | None = None  # counts from the producer's drop markers

    def __repr__(self) -> str:
        state = "done" if self.done else f"batch {self.batch}"
        return f"<Chunk [{self.start}, {self.end}) {self.events} events, {state}>"

    def absorb(self, *, skipped: int, drops: dict[str, int] | None, rejected: int, events: int) -> None:
        self.skipped += skipped
        self.rejected += rejected
        self.events += events
        if drops:
            if self.drops is None:
                self.drops = {}
            for reason, n in drops.items():
                self.drops[reason] = self.drops.get(reason, 0) + n


class Track:
    """One segment's place in the book (see the module docstring)."""

    __slots__ = ("acked", "ahead", "chunks", "name", "nonce", "pid")

    def __init__(self, name: str, nonce: str, pid: int, acked: int, ahead: Ranges) -> None:
        self.name = name
        self.nonce = nonce
        self.pid = pid
        self.acked = acked
        self.ahead = ahead
        self.chunks: collections.deque[Chunk] = collections.deque()

    def __repr__(self) -> str:
        return f"<Track {self.name} acked={self.acked} chunks={len(self.chunks)} ahead={self.ahead}>"

    @property
    def read_to(self) -> int:
        """Where reading continues: the end of the last chunk, else the acknowledged offset."""
        return self.chunks[-1].end if self.chunks else self.acked

    @property
    def unresolved(self) -> bool:
        return bool(self.chunks)


@dataclass
class Outcome:
    """What became of a batch: its events ``delivered`` or ``rejected`` by the data plane (``not_kept``
    of those could not be kept in rejected/), after ``retried`` failed attempts; or ``abandoned``
    unresolved (a shutdown): its events are sent again after a restart."""

    delivered: int = 0
    rejected: int = 0
    not_kept: int = 0
    retried: int = 0
    abandoned: bool = False


DROP_NOT_KEPT: Final = "rejected_not_kept"


@dataclass
class Book:
    """Every segment's :class:`Track`, the batches that hold their chunks, and the ledger state they
    add up to. Start it from the committed ledger: ``Book(ledger.load(...))``."""

    state: LedgerState = field(default_factory=LedgerState)
    tracks: dict[str, Track] = field(default_factory=dict)
    batches: dict[int, list[tuple[Track, Chunk]]] = field(default_factory=dict)
    dirty: bool = False  # the ledger state changed since the last ledger() call
    _next_batch: int = 0

    def __repr__(self) -> str:
        return (
            f"<Book segments={len(self.tracks)} batches={len(self.batches)} "
            f"sent={self.state.counters.sent} dirty={self.dirty}>"
        )

    @property
    def counters(self) -> Counters:
        return self.state.counters

    # -- segments ----------------------------------------------------------------------------------

    def open(self, name: str, nonce: str, pid: int, first_offset: int) -> Track:
        """A segment found in the spool: reading starts at its acknowledged offset (at least
        ``first_offset``, where its frames begin)."""
        acked = max(self.state.offsets.get(name, 0), first_offset)
        track = self.tracks[name] = Track(name, nonce, pid, acked, list(self.state.ahead.get(name, [])))
        return track

    def forget(self, name: str) -> None:
        """A segment deleted (settled and reaped, or dropped under the quota): it leaves the ledger."""
        self.tracks.pop(name, None)
        if self.state.offsets.pop(name, None) is not None or name in self.state.ahead:
            self.state.ahead.pop(name, None)
            self.dirty = True

    def forget_missing(self, present: set[str]) -> None:
        """Ledger entries of segments no longer on disk and not being read (deleted before a commit
        recorded it)."""
        for name in [n for n in self.state.offsets if n not in present and n not in self.tracks]:
            del self.state.offsets[name]
            self.state.ahead.pop(name, None)
            self.dirty = True

    def settled(self, track: Track) -> bool:
        """Nothing of the segment is unresolved: once the file will not change, it may be deleted."""
        return not track.chunks

    # -- reading -----------------------------------------------------------------------------------

    def new_batch(self) -> int:
        batch = self._next_batch
        self._next_batch += 1
        self.batches[batch] = []
        return batch

    def add_events(self, track: Track, batch: int, end: int, count: int) -> None:
        """``count`` events read up to ``end`` went into ``batch`` (which must be open)."""
        chunks = track.chunks
        if chunks and chunks[-1].batch == batch and not chunks[-1].done:
            chunk = chunks[-1]
            chunk.end = end
        else:
            chunk = Chunk(batch, chunks[-1].end if chunks else track.acked, end)
            chunks.append(chunk)
            self.batches[batch].append((track, chunk))
        chunk.events += count

    def add_resolved(
        self,
        track: Track,
        end: int,
        *,
        skipped: int = 0,
        drops: dict[str, int] | None = None,
        rejected: int = 0,
        events: int = 0,
        already_done: bool = False,
        now: float = 0.0,
    ) -> None:
        """Bytes read up to ``end`` that need no delivery (a skip, a drop marker, a seal, an event kept
        in rejected/ at once): resolved together with the chunk before them, if it still waits; with
        ``already_done`` (resolved before a restart), as a resolved chunk of their own, so the ledger
        goes on recording them as such until ``acked`` passes them."""
        chunks = track.chunks
        if chunks and (chunks[-1].done or not already_done):
            chunk = chunks[-1]  # a pending chunk resolves these bytes with it; a resolved one absorbs them
        elif chunks:
            chunk = Chunk(None, chunks[-1].end, end, done=True)
            chunks.append(chunk)
        else:
            track.acked = end
            self._settle(track, skipped=skipped, drops=drops, rejected=rejected, events=events, now=now)
            self.state.offsets[track.name] = end
            self.dirty = True
            return
        chunk.end = end
        chunk.absorb(skipped=skipped, drops=drops, rejected=rejected, events=events)

    def resolved_before(self, track: Track, start: int, end: int) -> bool:
        """Whether ``[start, end)`` lies in a range resolved before the last restart (then it is not
        sent again: the caller resolves it with ``add_resolved(..., already_done=True)``)."""
        ranges = track.ahead
        while ranges and start >= ranges[0][1]:
            ranges.pop(0)
        return bool(ranges) and ranges[0][0] <= start and end <= ranges[0][1]

    # -- outcomes ----------------------------------------------------------------------------------

    def resolve(self, batch: int, outcome: Outcome, now: float) -> None:
        """A batch's outcome: its chunks resolve (unless abandoned), and every segment's ``acked``
        advances over the resolved chunks at its head."""
        members = self.batches.pop(batch, [])
        counters = self.state.counters
        counters.retried += outcome.retried
        if outcome.abandoned:
            for _, chunk in members:
                chunk.batch = None  # still unresolved: read and sent again after a restart
            if outcome.retried:
                self.dirty = True  # its failed attempts were counted: the ledger keeps them
            return
        counters.sent += outcome.delivered
        counters.rejected += outcome.rejected
        if outcome.not_kept:
            counters.add_drops({DROP_NOT_KEPT: outcome.not_kept})
        for _, chunk in members:
            chunk.done = True
            chunk.batch = None
        for track in {id(t): t for t, _ in members}.values():
            chunks = track.chunks
            while chunks and chunks[0].done:
                chunk = chunks.popleft()
                track.acked = chunk.end
                self._settle(
                    track, skipped=chunk.skipped, drops=chunk.drops, rejected=chunk.rejected,
                    events=chunk.events, now=now,
                )  # fmt: skip
            self.state.offsets[track.name] = track.acked
        self.dirty = True

    def _settle(
        self,
        track: Track,
        *,
        skipped: int,
        drops: dict[str, int] | None,
        rejected: int,
        events: int,
        now: float,
    ) -> None:
        """Bytes that just became part of ``acked``: their counts, to the totals and to their producer.
        (``sent`` was counted when the batch was acknowledged, with the data plane's own count.)"""
        counters = self.state.counters
        counters.skipped_bytes += skipped
        counters.rejected += rejected
        if drops:
            counters.add_drops(drops)
        if events or skipped or drops:
            self.state.credit_producer(
                track.nonce, pid=track.pid, events=events, skipped=skipped, drops=drops, now=now
            )

    # -- what the ledger records -------------------------------------------------------------------

    def ahead(self) -> dict[str, Ranges]:
        """Per segment, the resolved ranges past ``acked``, merged: behind batches still in flight,
        and from before the last restart, not yet reached again."""
        out: dict[str, Ranges] = {}
        for name, track in self.tracks.items():
            ranges: Ranges = []
            for chunk in track.chunks:
                if not chunk.done:
                    continue
                if ranges and ranges[-1][1] == chunk.start:
                    ranges[-1][1] = chunk.end
                else:
                    ranges.append([chunk.start, chunk.end])
            ranges.extend([list(r) for r in track.ahead])
            if ranges:
                out[name] = sorted(ranges)
        return out

    def ledger(self) -> LedgerState:
        """The state the ledger may record now (the caller commits it durably); clears ``dirty``."""
        self.state.ahead = self.ahead()
        self.dirty = False
        return self.state

    def in_flight(self) -> int:
        """Batches handed out and not yet resolved."""
        return len(self.batches)
