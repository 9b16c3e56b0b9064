"""The sender's intake on real segment files: runs of event frames batched the fast way give exactly the
events, bytes and bookkeeping of the reference path (one frame at a time through ``WireMapper``), also
when the pipeline fills in the middle of a run and the decoder steps back (``FrameDecoder.unread``)."""

from __future__ import annotations

import random
from pathlib import Path

import msgpack
import orjson
import pytest

from rudder_fast import Emitter, __version__, config
from rudder_fast.batching import Batch
from rudder_fast.book import Book
from rudder_fast.delivery import Quarantine
from rudder_fast.framing import FRAME_EVENT, Frame
from rudder_fast.intake import Intake
from rudder_fast.layout import SpoolPaths
from rudder_fast.tail import list_segments, read_whole
from rudder_fast.wire import WireMapper


def fill(spool: Path, events: int) -> None:
    """Tracks and a few of every other shape, written by a real producer (then closed: files final)."""
    emitter = Emitter(str(spool))
    try:
        for i in range(events):
            if i % 50 == 7:
                emitter.identify(user_id=f"u{i % 13}", traits={"plan": "pro", "n": i})
            elif i % 50 == 11:
                emitter.track(
                    user_id=f"u{i}", event="With context", context={"ip": "1.2.3.4"}, properties={"i": i}
                )
            elif i % 50 == 13:
                emitter.page(anonymous_id=f"a{i}", name="Home", properties={"path": "/"})
            else:
                emitter.track(
                    user_id=f"u{i % 97}", event="Order Completed", properties={"i": i, "tags": ["a"]}
                )
    finally:
        emitter.close()


def reference_stubs(spool: Path) -> list[bytes]:
    """Every event's stub the reference way: each frame, WireMapper.event, orjson.dumps."""
    mapper = WireMapper(__version__)
    out = []
    for path in list_segments(SpoolPaths(spool).segments):
        tail, items = read_whole(path)
        assert tail is not None
        for item in items:
            if isinstance(item, Frame) and item.type == FRAME_EVENT:
                out.append(
                    orjson.dumps(mapper.event(msgpack.unpackb(item.payload), tail.nonce, item.seq))[:-1]
                )
        tail.close()
    return out


@pytest.mark.parametrize("max_events", [1, 7, 256, 10_000])
def test_batches_hold_exactly_the_reference_events_when_workers_refuse_at_random(
    tmp_path: Path, max_events: int
) -> None:
    spool = tmp_path / "spool"
    fill(spool, 1_500)
    want = reference_stubs(spool)
    rng = random.Random(max_events)
    batches: list[Batch] = []

    def submit(batch: Batch) -> bool:
        if rng.random() < 0.6:  # every worker busy: the intake must hold the batch and stop reading
            return False
        batches.append(batch)
        return True

    paths = SpoolPaths(spool)
    cfg = config.SenderConfig(
        spool_dir=spool, write_key="k", data_plane_urls=("http://127.0.0.1:9",), max_batch_events=max_events
    )
    book = Book()
    intake = Intake(
        paths.segments, book, mapper=WireMapper(__version__), quarantine=Quarantine(paths.rejected),
        submit=submit, cfg=cfg,
    )  # fmt: skip
    intake.rescan()
    for _ in range(100_000):
        now = 0.0
        progressed = intake.pump(now)
        intake.submit_ready()
        intake.flush_due(now + 1.0, caught_up=not progressed)
        read_all = all(seg.tail.done for seg in intake.segments.values())
        if not progressed and intake.batch is None and intake.ready is None and read_all:
            break
    else:
        raise AssertionError("the intake never caught up")
    got = [stub for batch in batches for stub in batch.stubs]
    assert len(got) == len(want)
    assert got == want  # the same bytes, in file order, none twice, none lost
    assert all(len(b.stubs) <= max_events for b in batches)
    assert all(b.size <= cfg.max_batch_bytes for b in batches)
    # The book knows every event as batched, in the batch it went to.
    assert sum(sum(c.events for _, c in book.batches[b.id]) for b in batches) == len(want)
    for seg in intake.segments.values():
        seg.tail.close()


@pytest.mark.parametrize("closed", [True, False], ids=["writer-closed", "writer-alive"])
def test_a_partial_batch_lingers_only_while_a_writer_may_add_to_it(tmp_path: Path, closed: bool) -> None:
    """Caught up with a partial batch: while a producer still holds its file, the batch waits for the
    linger (more events may come); once every writer has sealed its file, it goes at once (nothing can
    join it: lingering would only delay the end of a job)."""
    spool = tmp_path / "spool"
    emitter = Emitter(str(spool))
    for i in range(10):
        emitter.track(user_id=f"u{i}", event="E")
    if closed:
        emitter.close()
    paths = SpoolPaths(spool)
    cfg = config.SenderConfig(spool_dir=spool, write_key="k", data_plane_urls=("http://127.0.0.1:9",))
    submitted: list[Batch] = []

    def submit(batch: Batch) -> bool:
        submitted.append(batch)
        return True

    intake = Intake(
        paths.segments, Book(), mapper=WireMapper(__version__), quarantine=Quarantine(paths.rejected),
        submit=submit, cfg=cfg,
    )  # fmt: skip
    intake.rescan()
    try:
        now = 100.0
        while intake.pump(now):  # read everything there is
            pass
        intake.flush_due(now + 0.001, caught_up=True)
        intake.submit_ready()
        assert [len(b.stubs) for b in submitted] == ([10] if closed else [])
        if not closed:
            intake.flush_due(now + cfg.linger_s, caught_up=True)  # the linger is over
            intake.submit_ready()
            assert [len(b.stubs) for b in submitted] == [10]
    finally:
        emitter.close()
        for seg in intake.segments.values():
            seg.tail.close()
