"""The sender's intake: finding segments, reading them, and turning their frames into batches.

How this works
--------------
:class:`Intake` belongs to the sender's main thread. It lists ``segments/`` (at most every 0.05-1 s),
opens a :class:`Segment` for each new file at its acknowledged offset, and reads each one
incrementally. Every frame goes one way: an event is mapped to its wire JSON (once; the request body is
spliced from these *stubs*) and added to the open :class:`~rudder_fast.batching.Batch`; a skip, a drop
marker or a seal is resolved in the :class:`~rudder_fast.book.Book` at once; an item inside a range the
ledger recorded as resolved before a restart is resolved again, not resent.

The pipeline is bounded: at most ``concurrency`` batches in flight, one waiting (``ready``), one being
built. When it is full, reading stops until a worker is free, so memory stays flat whatever the
backlog. An idle segment costs no system call between directory scans and liveness probes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from . import config
from .batching import Batch, fits_alone, total_size
from .book import Book, Track
from .counts import DROP_NOT_KEPT, DROP_TOO_LARGE
from .delivery import Quarantine, Recurring
from .framing import FRAME_DROPS, FRAME_EVENT, FRAME_SEAL, EventRun, Frame, NeedData, Skip, decode_drops
from .tail import SegmentTail, scan_segments, writer_alive
from .wire import StubEncoder, WireMapper

log = logging.getLogger("rudder_fast.sender")

# Event frames decoded and encoded together: enough to amortise the per-run work, few enough that a run
# cut short by a full pipeline wastes little.
RUN_EVENTS = 256


class Segment:
    """One segment file being read: its reader, its place in the book, and when to look at it next."""

    __slots__ = ("next_probe", "reread_at", "size", "tail", "track")

    def __init__(self, tail: SegmentTail, track: Track) -> None:
        self.tail = tail
        self.track = track
        self.next_probe = 0.0
        self.size = 1 << 62  # until the first directory scan says otherwise: read
        self.reread_at = -1  # offset of the last suspected corruption re-read from disk

    def __repr__(self) -> str:
        return f"<Segment {self.track.name} read={self.tail.read_pos} size={self.size} {self.track!r}>"

    @property
    def name(self) -> str:
        return self.track.name


class Intake:
    """Segments in, batches out (see the module docstring)."""

    def __init__(
        self,
        segments_dir: Path,
        book: Book,
        *,
        mapper: WireMapper,
        quarantine: Quarantine,
        submit: Callable[[Batch], bool],
        cfg: config.SenderConfig,
    ) -> None:
        self.segments_dir = segments_dir
        self.book = book
        self.mapper = mapper
        self.encoder = StubEncoder(mapper)
        self.quarantine = quarantine
        self.submit = submit  # hand a closed batch to a worker; False while all are busy
        self.max_bytes = cfg.max_batch_bytes
        self.max_events = cfg.max_batch_events
        self.linger_s = cfg.linger_s
        self.drain = cfg.drain
        self.segments: dict[str, Segment] = {}
        self.batch: Batch | None = None  # being filled
        self.ready: Batch | None = None  # closed, waiting for a free worker
        self.usage_bytes = 0  # unacknowledged segment bytes at the last scan
        self.unreadable = Recurring(
            logging.WARNING, "unreadable records were skipped (counted as skipped bytes)"
        )
        self.too_large = Recurring(
            logging.ERROR, "events too large to send were counted, not kept in rejected/"
        )

    def __repr__(self) -> str:
        return f"<Intake segments={len(self.segments)} batch={self.batch!r} ready={self.ready!r}>"

    # -- discovery -----------------------------------------------------------------------------------

    def rescan(self) -> int:
        """List segments/: open the new ones, note every file's size. Returns the unacknowledged bytes."""
        present = set()
        usage = 0
        for path, size in scan_segments(self.segments_dir):
            name = path.name
            present.add(name)
            seg = self.segments.get(name)
            if seg is None:
                seg = self._open(path)
                if seg is None:
                    continue
            seg.size = max(size, seg.tail.read_pos)
            usage += max(0, size - seg.track.acked)
        self.book.forget_missing(present)
        self.usage_bytes = usage
        return usage

    def _open(self, path: Path) -> Segment | None:
        tail = SegmentTail.open(path, self.book.state.offsets.get(path.name, 0))
        if tail is None:
            return None
        header = tail.header
        track = self.book.open(path.name, tail.nonce, header.pid if header else 0, tail.decoder.offset)
        seg = self.segments[path.name] = Segment(tail, track)
        return seg

    def remove(self, seg: Segment) -> None:
        """The segment's file was deleted: forget it."""
        del self.segments[seg.name]
        self.book.forget(seg.name)

    # -- reading -------------------------------------------------------------------------------------

    def pump(self, now: float) -> bool:
        """Read and batch whatever is available, as far as the in-flight bound allows."""
        progressed = False
        for seg in list(self.segments.values()):
            tail = seg.tail
            if tail.done:
                continue
            while True:
                if self.ready is not None and not self.submit_ready():
                    return progressed  # every worker busy and one batch waiting: read no further
                if not tail.foreign and self._consume(seg, now):
                    progressed = True
                    continue
                if self._read(seg, now):
                    progressed = True
                    continue
                if tail.final:
                    if not tail.foreign and tail.decoder.buffered:
                        continue  # final now: the decoder turns the rest into frames and torn skips
                    for leftover in tail.frames():  # a foreign file: one skip, never buffered
                        self._account(seg, leftover, now)
                        progressed = True
                break
        return progressed

    def _read(self, seg: Segment, now: float) -> int:
        """New bytes of a segment into its decoder. An idle segment costs no syscall between directory
        scans (which refresh ``seg.size``) and liveness probes: thousands of idle producers stay cheap."""
        tail = seg.tail
        if tail.read_pos < seg.size:
            got = tail.read_at_most(config.READ_CHUNK)
            if got:
                if got == config.READ_CHUNK:
                    seg.size = max(seg.size, tail.read_pos + 1)  # probably more: keep reading
                return got
            seg.size = tail.read_pos
        if tail.writer_gone or now >= seg.next_probe:
            seg.next_probe = now + config.PROBE_INTERVAL_S
            return tail.read_more()  # probes the writer's lock; marks the tail final when it is gone
        return 0

    def _consume(self, seg: Segment, now: float) -> bool:
        """Decode the buffered frames of one segment into batches, until more data is needed or the
        pipeline is full. The sender's hot loop: runs of event frames go the fast way (:meth:`_add_run`);
        anything else, and every frame of a segment read again after a restart, one at a time."""
        tail = seg.tail
        decoder = tail.decoder
        track = seg.track
        consumed = False
        while True:
            if not track.ahead:
                start = decoder.offset
                run = decoder.take_events(RUN_EVENTS)
                if run:
                    consumed = True
                    if not (self._add_run(seg, run, start, now) and self.submit_ready()):
                        return consumed
                    continue
            item = decoder.next()
            if isinstance(item, NeedData):
                return consumed
            consumed = True
            if not self._handle(seg, item, now):
                return consumed

    def _handle(self, seg: Segment, item: Frame | Skip, now: float) -> bool:
        """One item the slow way; False when reading must stop (a re-read, or the pipeline is full)."""
        if type(item) is Skip and self._reread(seg, item):
            return False
        if seg.track.ahead and self._resolved_before_restart(seg, item, now):
            return True
        if type(item) is not Frame or item.type != FRAME_EVENT:
            self._account(seg, item, now)
        elif not self._add_run(seg, EventRun((item.seq,), (item.payload,), (item.end,)), item.offset, now):
            return False
        return self.submit_ready()

    def _reread(self, seg: Segment, skip: Skip) -> bool:
        """Corruption in a file whose writer is alive is most likely a race, not damage: the writer
        rolled back a short write (ftruncate) and wrote again where this reader had already buffered
        the old bytes. Re-read from the disk once before believing it."""
        tail = seg.tail
        if tail.writer_gone or seg.reread_at == skip.offset:
            return False
        seg.reread_at = skip.offset
        tail.rewind(skip.offset)
        seg.size = max(seg.size, skip.offset + 1)
        return True

    def _add_run(self, seg: Segment, run: EventRun, start: int, now: float) -> bool:
        """Event frames (from ``start``, the first one's offset) into batches, each encoded once into
        its stub. False when the pipeline filled before the run's end: the decoder is stepped back to
        the first event not batched, which the next call reads again."""
        track = seg.track
        book = self.book
        batch = self.batch
        stubs = self.encoder.stubs(run, track.nonce)
        size = total_size(stubs)
        if batch is not None and size is not None and batch.has_room_for(len(stubs), size):
            batch.extend(stubs, size)  # type: ignore[arg-type]  # none is None: size is not None
            book.add_events(track, batch.id, run.ends[-1], len(stubs))
            return True
        begin = start  # where the frame being handled starts
        added = 0  # events added to ``batch`` not yet written in the book
        for end, stub in zip(run.ends, stubs, strict=True):
            if stub is None or batch is None or not batch.has_room(len(stub)):
                if added and batch is not None:
                    book.add_events(track, batch.id, begin, added)
                    added = 0
                if stub is None:
                    self.unreadable.note(f"{track.name}:{begin}: {self.encoder.last_error}")
                    book.add_resolved(track, end, skipped=end - begin, now=now)
                    begin = end
                    continue
                if not self.submit_ready():
                    seg.tail.decoder.unread(begin)  # every worker busy and one batch waiting
                    return False
                batch = self._start_batch(stub, now)
                if batch is None:
                    self._too_large(track, end, stub, now)
                    begin = end
                    continue
            batch.add(stub)
            added += 1
            begin = end
        if added and batch is not None:
            book.add_events(track, batch.id, begin, added)
        return True

    def _account(self, seg: Segment, item: Frame | Skip, now: float) -> None:
        """A frame that is not an event (a drop marker, a seal), or bytes skipped: resolved at once."""
        track = seg.track
        if isinstance(item, Skip):
            self.book.add_resolved(track, item.offset + item.length, skipped=item.length, now=now)
        elif item.type == FRAME_DROPS:
            self.book.add_resolved(track, item.end, drops=decode_drops(item.payload), now=now)
        else:  # FRAME_SEAL (and any frame type this version does not use)
            if item.type == FRAME_SEAL:
                seg.tail.writer_gone = True  # nothing is appended after a seal
            self.book.add_resolved(track, item.end, now=now)

    def _resolved_before_restart(self, seg: Segment, item: Frame | Skip, now: float) -> bool:
        """Resolve, without sending, an item inside a range the ledger recorded as already resolved."""
        track = seg.track
        end = item.end if isinstance(item, Frame) else item.offset + item.length
        if not self.book.resolved_before(track, item.offset, end):
            return False
        if isinstance(item, Skip):
            self.book.add_resolved(track, end, skipped=item.length, already_done=True, now=now)
        elif item.type == FRAME_DROPS:
            drops = decode_drops(item.payload)
            self.book.add_resolved(track, end, drops=drops, already_done=True, now=now)
        else:
            if item.type == FRAME_SEAL:
                seg.tail.writer_gone = True
            # An event delivered before the restart (counted as sent then, credited to its producer now).
            events = int(item.type == FRAME_EVENT)
            self.book.add_resolved(track, end, events=events, already_done=True, now=now)
        return True

    # -- batches -------------------------------------------------------------------------------------

    def _start_batch(self, stub: bytes, now: float) -> Batch | None:
        """Close the open batch (it is full) and open the next; None if the event can never be sent."""
        if not fits_alone(stub):
            return None
        self.close_batch()
        batch = self.batch = Batch(self.book.new_batch(), now, self.max_bytes, self.max_events)
        return batch

    def _too_large(self, track: Track, end: int, stub: bytes, now: float) -> None:
        """An event above the data plane's size limit on its own: kept in rejected/ at once."""
        try:
            kept = self.quarantine.put(stub, 413, "event larger than the data plane's request size limit")
        except OSError as exc:
            self.too_large.note(str(exc))
            self.book.add_resolved(track, end, drops={DROP_TOO_LARGE: 1}, now=now)
            return
        drops = None if kept else {DROP_NOT_KEPT: 1}
        self.book.add_resolved(track, end, rejected=1, drops=drops, now=now)

    def close_batch(self) -> None:
        """The open batch is complete: hand it to a worker, or park it as the one waiting batch."""
        batch = self.batch
        if batch is None:
            return
        self.batch = None
        if self.ready is not None:  # the loop closes a batch only when none is waiting
            raise RuntimeError("a second batch waiting for a worker")
        self.ready = batch
        self.submit_ready()

    def submit_ready(self) -> bool:
        if self.ready is None:
            return True
        if not self.submit(self.ready):
            return False
        self.ready = None
        return True

    def flush_due(self, now: float, caught_up: bool) -> None:
        """Close the open batch once it has lingered long enough, or at once when caught up and either
        draining or every writer is gone (sealed its file, or exited): then nothing can join the batch
        until a new producer starts, and lingering would only delay the last events of a job."""
        batch = self.batch
        if batch is None or self.ready is not None:
            return
        if now - batch.created >= self.linger_s or (caught_up and (self.drain or self._writers_gone())):
            self.close_batch()

    def _writers_gone(self) -> bool:
        return all(seg.tail.writer_gone for seg in self.segments.values())

    # -- state ---------------------------------------------------------------------------------------

    def settled(self, seg: Segment) -> bool:
        """Read to the end of a file that will not change, and every byte of it resolved."""
        return seg.tail.done and self.book.settled(seg.track)

    def caught_up(self) -> bool:
        """Nothing left to read or batch: every file read to its end (and a torn tail decided)."""
        if self.batch is not None or self.ready is not None:
            return False
        for seg in self.segments.values():
            tail = seg.tail
            if seg.track.unresolved:
                return False
            try:
                size = tail.size()
            except OSError:
                continue
            if tail.read_pos < size:
                return False
            if tail.decoder.buffered and (tail.final or not writer_alive(tail.fd)):
                return False
        return True

    def live_producers(self) -> int:
        return sum(1 for s in self.segments.values() if not s.tail.final)

    def next_rescan(self, now: float) -> float:
        return now + min(
            config.RESCAN_MAX_S, config.RESCAN_BASE_S + config.RESCAN_PER_SEGMENT_S * len(self.segments)
        )
