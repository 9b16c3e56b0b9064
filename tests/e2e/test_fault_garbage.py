"""Garbage in the spool: the sender neither crashes nor sends garbage, delivers every event the
corruption did not destroy, and counts exactly the bytes it skipped (docs/design.md, invariant 2).

Each scenario starts from a spool with history (part or all of it already delivered, so the ledger has
offsets and counters), then damages it the way disks, operators and stray tools do: random bytes
appended to a finished segment, foreign files in ``segments/``, a zero-filled page in the middle of a
segment (what a power loss leaves on some file systems). Then ``rudder-fast-sender --drain``.
"""

from __future__ import annotations

import os
import random
import secrets
from pathlib import Path

import pytest

from rudder_fast.framing import FRAME_EVENT, HEADER_SIZE, SYNC_BYTES, encode_frame
from tests.support.delivery import assert_delivered_exactly, assert_wire_event
from tests.support.devserver import DevServer
from tests.support.processes import stop_process
from tests.support.producers import ProducerChild, fill_spool
from tests.support.sender import Senders, drain, sender_env
from tests.support.spool import dump_segment, segment_files, spool_files, status_json
from tests.support.waiting import wait_for

PAGE = 4096


def check_received(server: DevServer, expected: list[str]) -> None:
    received = server.received()
    for event in received:
        assert_wire_event(event)
    assert_delivered_exactly(received, expected)


def garbage(length: int, kind: str = "random") -> bytes:
    """``random``: bytes; ``sync-prefixed``: random bytes after a frame's sync word (the decoder must
    resynchronise rather than trust the length that follows); ``torn-frame``: the first part of a
    well-formed event frame, as a writer killed mid-write would leave (but after a seal, or after the
    writer already exited, it can only be damage)."""
    seed = random.randrange(2**32)
    print(f"\n{kind} garbage, seed {seed}")
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(length)
    if kind == "sync-prefixed":
        return SYNC_BYTES + rng.randbytes(length - len(SYNC_BYTES))
    assert kind == "torn-frame"
    frame = encode_frame(FRAME_EVENT, 10**9, rng.randbytes(length * 2))
    return frame[:length]


@pytest.mark.parametrize(
    ("sealed", "kind"),
    [
        pytest.param(True, "random", id="sealed-random"),
        pytest.param(False, "random", id="exited-random"),
        pytest.param(False, "sync-prefixed", id="exited-sync-prefixed"),
        pytest.param(True, "torn-frame", id="sealed-torn-frame"),
    ],
)
def test_garbage_appended_to_a_finished_segment(
    devserver: DevServer, senders: Senders, spool_dir: Path, sealed: bool, kind: str
) -> None:
    producer = ProducerChild(spool_dir)
    try:
        first = producer.emit("appended", 300, pad=200)
        assert None not in first
        # Partly drained: a running sender delivers what is there so far, then stops. The segment is
        # still live, so it stays, with its acknowledged offset in the ledger.
        sender = senders.start([], sender_env(spool_dir, devserver.url))
        wait_for(lambda: len(devserver.received()) >= len(first), timeout=30)
        assert stop_process(sender.proc) == 0, sender.stderr()
        second = producer.emit("appended", 300, pad=200)
        assert None not in second
        if sealed:
            producer.call("close")
    finally:
        producer.stop()
    (segment,) = segment_files(spool_dir)
    junk = garbage(1000 + random.randrange(3000), kind)
    with open(segment, "ab") as f:
        f.write(junk)

    drain(senders, spool_dir, devserver)
    check_received(devserver, [m for m in first + second if m is not None])
    doc = status_json(spool_dir)
    assert doc["counters"]["skipped_bytes"] == len(junk), doc["counters"]
    assert doc["counters"]["sent"] == 600, doc["counters"]
    assert segment_files(spool_dir) == [], "the damaged segment was not deleted once drained"


def test_foreign_files_in_the_segments_directory(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    earlier = fill_spool(spool_dir, 2, 200)
    drain(senders, spool_dir, devserver)  # fully drained: the ledger has history, segments/ is empty
    assert segment_files(spool_dir) == []
    produced = fill_spool(spool_dir, 2, 200)

    segments = spool_dir / "segments"
    random_seg = segments / f"{secrets.token_hex(6)}.seg"
    random_seg.write_bytes(junk := garbage(5000))
    empty_seg = segments / f"{secrets.token_hex(8)}-{os.getpid()}-0.seg"  # a killed writer's 0-byte file
    empty_seg.write_bytes(b"")
    other = segments / f"notes-{secrets.token_hex(4)}.txt"
    other_bytes = os.urandom(3000)
    other.write_bytes(other_bytes)

    drain(senders, spool_dir, devserver)
    check_received(devserver, earlier.ids + produced.ids)
    doc = status_json(spool_dir)
    assert doc["counters"]["skipped_bytes"] == len(junk), doc["counters"]
    assert doc["counters"]["sent"] == 800, doc["counters"]
    assert not random_seg.exists(), "the garbage .seg file was left behind"
    assert not empty_seg.exists(), "the empty .seg file was left behind"
    assert segment_files(spool_dir) == []
    assert other.read_bytes() == other_bytes, "a file the sender does not own was touched"
    assert doc["backlog"]["events"] == 0, doc["backlog"]
    assert doc["backlog"]["segments"] == 0, doc["backlog"]


def test_a_zero_filled_page_in_the_middle_of_a_finished_segment(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    earlier = fill_spool(spool_dir, 1, 100)
    drain(senders, spool_dir, devserver)
    produced = fill_spool(spool_dir, 2, 400, payload=300)  # ~40 pages each; both exit
    victim = max(segment_files(spool_dir), key=lambda p: p.stat().st_size)
    before = dump_segment(victim)
    assert before.skips == []
    assert len(before.events) == 400
    offset = before.size // 2 // PAGE * PAGE
    assert offset > HEADER_SIZE
    assert offset + PAGE < before.size
    with open(victim, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * PAGE)
    destroyed = [f for f in before.events if f.offset < offset + PAGE and f.end > offset]
    destroyed_ids = {before.message_id(f) for f in destroyed}
    lost_bytes = sum(f.end - f.offset for f in destroyed)
    assert 5 <= len(destroyed) <= 15, len(destroyed)
    print(
        f"\nzeroed [{offset}, {offset + PAGE}) of {victim.name}: {len(destroyed)} events, {lost_bytes} bytes"
    )

    drain(senders, spool_dir, devserver)
    survivors = [m for m in produced.ids if m not in destroyed_ids]
    check_received(devserver, earlier.ids + survivors)
    doc = status_json(spool_dir)
    assert doc["counters"]["skipped_bytes"] == lost_bytes, doc["counters"]
    assert doc["counters"]["sent"] == len(earlier.ids) + len(survivors), doc["counters"]
    assert segment_files(spool_dir) == []
    assert spool_files(spool_dir, "tmp") == []
