"""The delivery book (``rudder_fast.book``) as a state machine: hypothesis drives it through random
interleavings of reads, batch cuts, outcomes in any order, refusals, abandoned batches, commits, crashes
and restarts from the committed ledger, and checks after every step what at-least-once rests on:

* every event read is delivered, or still unresolved in the book (it will be sent): never lost;
* what the committed ledger records as resolved was resolved: after a crash, an event is sent again
  only if its batch was unresolved at the last commit (a restart resends only what was in flight);
* the committed offset of a segment never moves backwards;
* a segment is settled (may be deleted) only once every event of it was delivered or refused.

A small model of the sender's reading loop (the same steps as ``rudder_fast.intake``) stands between
the machine and the book. No files, no clock, no threads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rudder_fast.book import Book, Outcome
from rudder_fast.ledger import LedgerState

HEADER = 48


@dataclass(frozen=True)
class Item:
    """One frame of a segment: an event (``key`` names it), or a drop marker, seal or skipped bytes."""

    start: int
    end: int
    key: str | None  # None: not an event


@dataclass
class Seg:
    name: str
    items: list[Item]
    next: int = 0  # index of the next item to read in this run
    deleted: bool = False


@dataclass
class InFlight:
    batch: int
    keys: list[str] = field(default_factory=list)


def make_segment(index: int, kinds: list[bool], sizes: list[int]) -> Seg:
    items = []
    offset = HEADER
    for n, (is_event, size) in enumerate(zip(kinds, sizes, strict=False)):
        key = f"s{index}-e{n}" if is_event else None
        items.append(Item(offset, offset + size, key))
        offset += size
    return Seg(f"{index:016x}-{index}-0.seg", items)


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = Book()
        self.segs: dict[str, Seg] = {}
        self.open: InFlight | None = None
        self.inflight: dict[int, InFlight] = {}
        self.delivered: dict[str, int] = {}  # at the data plane: event -> times received
        self.refused: set[str] = set()
        self.committed = LedgerState()
        self.committed_resolved: set[str] = set()  # events the committed ledger records as resolved
        self.resolved_now: set[str] = set()  # events whose batch was resolved (this run or before)
        self.restarts = 0

    # -- segments and reading ------------------------------------------------------------------------

    @rule(
        kinds=st.lists(st.booleans(), min_size=1, max_size=12),
        sizes=st.lists(st.integers(1, 40), min_size=12, max_size=12),
    )
    @precondition(lambda self: len(self.segs) < 4)
    def new_segment(self, kinds: list[bool], sizes: list[int]) -> None:
        seg = make_segment(len(self.segs), kinds, sizes)
        self.segs[seg.name] = seg
        self.book.open(seg.name, seg.name[:16], 1, HEADER)

    @rule(data=st.data())
    @precondition(lambda self: any(not s.deleted and s.next < len(s.items) for s in self.segs.values()))
    def read(self, data: st.DataObject) -> None:
        seg = data.draw(
            st.sampled_from([s for s in self.segs.values() if not s.deleted and s.next < len(s.items)])
        )
        item = seg.items[seg.next]
        seg.next += 1
        track = self.book.tracks[seg.name]
        if track.ahead and self.book.resolved_before(track, item.start, item.end):
            # Resolved before the restart: not sent again (the intake does the same).
            assert item.key is None or item.key in self.committed_resolved, item
            self.book.add_resolved(track, item.end, events=int(item.key is not None), already_done=True)
            return
        if item.key is None:
            self.book.add_resolved(track, item.end, skipped=item.end - item.start)
            return
        assert item.key not in self.committed_resolved, f"{item.key} resent though committed as resolved"
        if self.open is None:
            self.open = InFlight(self.book.new_batch())
        self.open.keys.append(item.key)
        self.book.add_events(track, self.open.batch, item.end, 1)

    @rule()
    @precondition(lambda self: self.open is not None)
    def close_batch(self) -> None:
        assert self.open is not None
        self.inflight[self.open.batch] = self.open
        self.open = None

    # -- outcomes ------------------------------------------------------------------------------------

    @rule(data=st.data(), refused=st.integers(0, 2))
    @precondition(lambda self: self.inflight)
    def resolve(self, data: st.DataObject, refused: int) -> None:
        """Any batch in flight, in any order, is answered."""
        batch = data.draw(st.sampled_from(sorted(self.inflight)))
        flight = self.inflight.pop(batch)
        bad = set(flight.keys[:refused])
        for key in flight.keys:
            if key in bad:
                self.refused.add(key)
            else:
                self.delivered[key] = self.delivered.get(key, 0) + 1
            self.resolved_now.add(key)
        outcome = Outcome(delivered=len(flight.keys) - len(bad), rejected=len(bad))
        self.book.resolve(batch, outcome, now=1.0)

    @rule(data=st.data())
    @precondition(lambda self: self.inflight)
    def stored_but_answer_lost(self, data: st.DataObject) -> None:
        """The data plane stored the batch, the answer never came back: delivered, still unresolved."""
        flight = self.inflight[data.draw(st.sampled_from(sorted(self.inflight)))]
        for key in flight.keys:
            self.delivered[key] = self.delivered.get(key, 0) + 1

    # -- the ledger, crashes, deletion ------------------------------------------------------------------

    @rule()
    def commit(self) -> None:
        before = dict(self.committed.offsets)
        self.committed = copy.deepcopy(self.book.ledger())
        for name, offset in self.committed.offsets.items():
            assert offset >= before.get(name, 0), f"{name}: committed offset went back"
        self.committed_resolved = {
            item.key
            for seg in self.segs.values()
            for item in seg.items
            if item.key is not None and self._covered(self.committed, seg.name, item)
        }
        assert self.committed_resolved <= self.resolved_now, "the ledger records unresolved events"

    @rule()
    def crash_and_restart(self) -> None:
        """SIGKILL: everything not committed is forgotten; a new book starts from the ledger."""
        self.book = Book(copy.deepcopy(self.committed))
        self.open = None
        self.inflight.clear()
        self.resolved_now = set(self.committed_resolved)
        for seg in self.segs.values():
            if seg.deleted:
                continue
            track = self.book.open(seg.name, seg.name[:16], 1, HEADER)
            seg.next = next((i for i, it in enumerate(seg.items) if it.end > track.acked), len(seg.items))
        self.restarts += 1

    @rule(data=st.data())
    @precondition(lambda self: any(self._settled(s) for s in self.segs.values()))
    def delete_settled(self, data: st.DataObject) -> None:
        seg = data.draw(st.sampled_from([s for s in self.segs.values() if self._settled(s)]))
        missing = [
            i.key for i in seg.items if i.key and i.key not in self.delivered and i.key not in self.refused
        ]
        assert not missing, f"{seg.name} settled with events never delivered: {missing}"
        seg.deleted = True
        self.book.forget(seg.name)

    def _settled(self, seg: Seg) -> bool:
        return (
            not seg.deleted and seg.next == len(seg.items) and self.book.settled(self.book.tracks[seg.name])
        )

    @staticmethod
    def _covered(state: LedgerState, name: str, item: Item) -> bool:
        if item.end <= state.offsets.get(name, 0):
            return True
        return any(a <= item.start and item.end <= b for a, b in state.ahead.get(name, []))

    # -- invariants ----------------------------------------------------------------------------------

    @invariant()
    def never_lost(self) -> None:
        """An event read and not yet delivered or refused is unresolved in the book: it will be sent."""
        for seg in self.segs.values():
            if seg.deleted:
                continue
            track = self.book.tracks[seg.name]
            for item in seg.items[: seg.next]:
                if item.key is None or item.key in self.delivered or item.key in self.refused:
                    continue
                assert item.end > track.acked, f"{item.key} lost: acked at {track.acked}"
                chunk = next((c for c in track.chunks if c.start < item.end <= c.end), None)
                assert chunk is not None, f"{item.key} lost: in no chunk"
                assert not chunk.done, f"{item.key} lost: counted resolved"

    @invariant()
    def committed_ledger_is_true(self) -> None:
        """What the committed ledger calls resolved was delivered or refused."""
        for key in self.committed_resolved:
            assert key in self.delivered or key in self.refused, key

    @invariant()
    def acked_never_passes_an_unresolved_chunk(self) -> None:
        for track in self.book.tracks.values():
            start = track.acked
            for chunk in track.chunks:
                assert chunk.start == start, (track, chunk)
                start = chunk.end


BookMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestBook = BookMachine.TestCase


def test_an_abandoned_batch_stays_unresolved_and_is_recorded_as_such() -> None:
    book = Book()
    track = book.open("a-1-0.seg", "a" * 16, 1, HEADER)
    first, second = book.new_batch(), book.new_batch()
    book.add_events(track, first, 100, 2)
    book.add_events(track, second, 150, 1)
    book.resolve(second, Outcome(delivered=1), now=0.0)
    book.resolve(first, Outcome(abandoned=True, retried=3), now=0.0)
    state = book.ledger()
    assert state.offsets == {"a-1-0.seg": HEADER}
    assert state.ahead == {"a-1-0.seg": [[100, 150]]}
    assert state.counters.sent == 1
    assert state.counters.retried == 3
    assert not book.settled(track)


def test_counts_move_with_the_acknowledged_offset() -> None:
    book = Book()
    track = book.open("a-1-0.seg", "a" * 16, 7, HEADER)
    batch = book.new_batch()
    book.add_events(track, batch, 100, 3)
    book.add_resolved(track, 120, skipped=20)  # resolved with the chunk before it
    book.add_resolved(track, 140, drops={"quota": 2})
    assert book.counters.skipped_bytes == 0
    assert book.counters.dropped == {}
    book.resolve(batch, Outcome(delivered=3), now=5.0)
    assert track.acked == 140
    assert book.counters.sent == 3
    assert book.counters.skipped_bytes == 20
    assert book.counters.dropped == {"quota": 2}
    producer = book.state.producers["a" * 16]
    assert producer["sent"] == 3
    assert producer["pid"] == 7
    assert producer["dropped"] == {"quota": 2}
