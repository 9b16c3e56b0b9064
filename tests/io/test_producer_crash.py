"""Producers killed with SIGKILL: what a call returned survives, and a torn write is never mis-read.

Children report each messageId through a pipe right after the call returns (the pipe's contents
outlive the child), then die by SIGKILL: by their own hand the instant the last call returned, or from
the test at a random moment in the middle of large writes. The spool is read by the real
``rudder-fast inspect``; per-file skips are checked with the library's reader.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import random
import select
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rudder_fast import Emitter
from rudder_fast.framing import Frame, Skip
from rudder_fast.tail import read_whole
from tests.support.processes import read_to_eof, reap
from tests.support.spool import inspect_spool, nonce_of, segment_files, seq_of, skipped_bytes

CHILD_DEADLINE_S = 60.0


def start_child(body: Callable[[int], None]) -> tuple[int, int]:
    """Fork a child that runs ``body(write_fd)``; it never returns into pytest (exit code 70 on error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(r)
            body(w)
            code = 0
        except BaseException:  # noqa: BLE001 - a child reports any failure by its exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def report(w: int, message_id: str | None) -> None:
    os.write(w, f"{message_id}\n".encode())  # < PIPE_BUF: the line arrives whole or not at all


# -- SIGKILL right after the last call returned ----------------------------------------------------


def _every_kind(em: Emitter, i: int) -> str | None:
    kind = i % 6
    if kind == 0:
        return em.track(user_id="u", event="Killed", properties={"i": i})
    if kind == 1:
        return em.identify(user_id="u", traits={"i": i})
    if kind == 2:
        return em.page(user_id="u", name="p", properties={"i": i})
    if kind == 3:
        return em.screen(anonymous_id="a", name="s", properties={"i": i})
    if kind == 4:
        return em.group(user_id="u", group_id="g", traits={"i": i})
    return em.alias(user_id="u", previous_id=f"old-{i}")


@pytest.mark.parametrize("n", [1, 3000])
def test_sigkill_the_instant_the_last_call_returned_loses_nothing(spool_dir: Path, n: int) -> None:
    def child(w: int) -> None:
        em = Emitter(spool_dir)
        for i in range(n):
            report(w, _every_kind(em, i))
        os.kill(os.getpid(), signal.SIGKILL)

    pid, r = start_child(child)
    deadline = time.monotonic() + CHILD_DEADLINE_S
    try:
        raw = read_to_eof(r, pid, deadline)  # EOF once the child is dead
    finally:
        os.close(r)
    assert reap(pid, deadline) == -signal.SIGKILL
    ids = raw.decode().split()
    assert len(ids) == n
    assert "None" not in ids
    events, summary = inspect_spool(spool_dir)
    assert sorted(e["messageId"] for e in events) == sorted(ids)
    assert skipped_bytes(summary) == 0
    by_id = {e["messageId"]: e for e in events}
    assert [by_id[m]["type"] for m in ids] == [
        ["track", "identify", "page", "screen", "group", "alias"][i % 6] for i in range(n)
    ]


# -- SIGKILL in the middle of large writes ---------------------------------------------------------

BLOB_SIZES = (20_000, 64_000, 150_000, 400_000)


def _heavy_writer(spool_dir: Path, tag: str, limit: int, w: int) -> None:
    """Emit big events in a tight loop, reporting each id; after ``limit`` events, wait to be killed."""
    rng = random.Random(tag)
    blobs = [rng.randbytes(n // 2).hex() for n in BLOB_SIZES]
    sums = [hashlib.sha256(b.encode()).hexdigest() for b in blobs]
    em = Emitter(spool_dir)
    for k in range(limit):
        b = k % len(blobs)
        props = {"k": k, "tag": tag, "n": len(blobs[b]), "sha": sums[b], "blob": blobs[b]}
        report(w, em.track(user_id=tag, event="heavy", properties=props))
    if tag.startswith("killed"):
        time.sleep(CHILD_DEADLINE_S)  # the test kills it: this is never reached in a normal run


def _kill_mid_write(children: dict[str, tuple[int, int]]) -> tuple[dict[str, bytes], dict[str, int]]:
    """Read each child's reports; SIGKILL every one but the survivor at a random moment after its
    fifth event; reap them all. (What each reported, each one's exit code.)"""
    rng = random.Random()
    lines: dict[str, bytes] = {tag: b"" for tag in children}
    kill_at: dict[str, float] = {}
    codes: dict[str, int] = {}
    open_fds = {r: tag for tag, (_, r) in children.items()}
    deadline = time.monotonic() + CHILD_DEADLINE_S
    completed = False
    try:
        while open_fds:
            assert time.monotonic() < deadline, "the children did not finish in time"
            ready = select.select(list(open_fds), [], [], 0.001)[0]
            for r in ready:
                tag = open_fds[r]
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    del open_fds[r]
                    os.close(r)
                    continue
                lines[tag] += chunk
                # once it has written a few events, kill it at a random moment soon after
                if tag != "survivor" and tag not in kill_at and lines[tag].count(b"\n") >= 5:
                    kill_at[tag] = time.monotonic() + rng.uniform(0, 0.03)
            now = time.monotonic()
            for tag, when in list(kill_at.items()):
                if when <= now:
                    os.kill(children[tag][0], signal.SIGKILL)
                    kill_at[tag] = float("inf")
        completed = True
    finally:
        for r in open_fds:
            os.close(r)
        for tag, (pid, _) in children.items():
            if not completed:  # none is reaped yet, so each pid is still our child's
                os.kill(pid, signal.SIGKILL)
            codes[tag] = reap(pid, deadline)
    return lines, codes


def _assert_reported_events_whole(
    reported: dict[str, list[str]], nonce_tag: dict[str, str], events: list[dict[str, Any]]
) -> None:
    """Every returned event is in the spool once, in order, whole, and attributed to its writer."""
    counts = collections.Counter(e["messageId"] for e in events)
    assert {m: n for m, n in counts.items() if n > 1} == {}, "an event is in the spool twice"
    by_id = {e["messageId"]: e for e in events}
    reported_set = {m for ids in reported.values() for m in ids}
    for tag, ids in reported.items():
        assert set(ids) <= set(counts), f"{tag}: a returned event is missing from the spool"
        assert [by_id[m]["properties"]["k"] for m in ids] == list(range(len(ids)))
        # at most the one event whose write finished just before the kill, ahead of its report
        nonce = nonce_of(ids[0])
        extra = [m for m in counts if nonce_of(m) == nonce and m not in reported_set]
        assert len(extra) <= 1, f"{tag}: unexpected events {extra}"
        for m in extra:
            assert seq_of(m) > seq_of(ids[-1])
            assert by_id[m]["properties"]["k"] == len(ids)
    assert {nonce_of(m) for m in counts} <= set(nonce_tag), "events from nowhere"
    for event in events:  # nothing mis-read: each payload is whole and belongs to its writer
        props = event["properties"]
        assert event["userId"] == props["tag"] == nonce_tag[nonce_of(event["messageId"])]
        assert props["n"] == len(props["blob"]) in BLOB_SIZES
        assert hashlib.sha256(props["blob"].encode()).hexdigest() == props["sha"]


def _torn_tails_only(spool_dir: Path, nonce_tag: dict[str, str]) -> int:
    """A torn frame can only be the tail of a killed writer's own file; the bytes skipped in all."""
    skipped_total = 0
    for path in segment_files(spool_dir):
        tail, items = read_whole(path)
        assert tail is not None
        tail.close()
        skips = [i for i in items if isinstance(i, Skip)]
        if skips:
            tag = nonce_tag[tail.nonce]
            assert tag != "survivor", f"skipped bytes in a file whose writer was not killed: {skips}"
            assert len(skips) == 1, f"{tag}: skip not at the tail: {skips}"
            assert items[-1] is skips[0], f"{tag}: skip not at the tail: {skips}"
            assert skips[0].reason == "torn"
            assert skips[0].offset + skips[0].length == path.stat().st_size
            skipped_total += skips[0].length
        assert all(isinstance(i, Frame) for i in items[:-1])
    return skipped_total


def test_sigkill_in_the_middle_of_writing(spool_dir: Path) -> None:
    tags = [f"killed{k}" for k in range(4)] + ["survivor"]
    children: dict[str, tuple[int, int]] = {}
    for tag in tags:
        limit = 40 if tag == "survivor" else 400
        children[tag] = start_child(functools.partial(_heavy_writer, spool_dir, tag, limit))
    lines, codes = _kill_mid_write(children)
    assert codes == {**{t: -signal.SIGKILL for t in tags if t != "survivor"}, "survivor": 0}

    reported = {tag: lines[tag].decode().split() for tag in tags}
    assert all("None" not in ids and ids for ids in reported.values())
    assert len(reported["survivor"]) == 40
    nonce_tag = {nonce_of(ids[0]): tag for tag, ids in reported.items()}
    assert len(nonce_tag) == len(tags)

    events, summary = inspect_spool(spool_dir)
    _assert_reported_events_whole(reported, nonce_tag, events)
    assert skipped_bytes(summary) == _torn_tails_only(spool_dir, nonce_tag)


# -- a torn tail, made deterministically -----------------------------------------------------------


_still_referenced: list[Emitter] = []


def _dead_writer_segment(spool_dir: Path, n: int) -> tuple[list[str], Path, Frame]:
    """A segment left by a process that emitted ``n`` events and died (no seal); its last frame."""

    def child(w: int) -> None:
        em = Emitter(spool_dir)
        _still_referenced.append(em)  # a dying writer seals nothing: no finalizer may run either
        for i in range(n):
            report(w, em.track(user_id="u", event="torn", properties={"i": i, "pad": "x" * 100}))

    pid, r = start_child(child)
    deadline = time.monotonic() + CHILD_DEADLINE_S
    try:
        raw = read_to_eof(r, pid, deadline)
    finally:
        os.close(r)
    assert reap(pid, deadline) == 0
    (path,) = segment_files(spool_dir)
    tail, items = read_whole(path)
    assert tail is not None
    tail.close()
    frames = [i for i in items if isinstance(i, Frame)]
    assert len(frames) == len(items) == n, "the segment should hold n whole event frames, no seal"
    assert frames[-1].end == path.stat().st_size
    return raw.decode().split(), path, frames[-1]


@pytest.mark.parametrize("keep", [0.99, 0.5, 23, 1], ids=["cut-a-few", "cut-half", "head-only", "1-byte"])
def test_truncated_last_frame_is_skipped_and_counted(spool_dir: Path, keep: float) -> None:
    ids, path, last = _dead_writer_segment(spool_dir, 20)
    length = last.end - last.offset
    kept = int(length * keep) if isinstance(keep, float) else int(keep)
    assert 0 < kept < length
    os.truncate(path, last.offset + kept)  # what a write cut short by the writer's death leaves

    events, summary = inspect_spool(spool_dir)
    assert [e["messageId"] for e in events] == ids[:-1]
    assert [e["properties"]["i"] for e in events] == list(range(19))
    assert skipped_bytes(summary) == kept


def test_corrupt_frame_mid_file_is_skipped_and_the_rest_still_read(spool_dir: Path) -> None:
    """Not a torn tail but a flipped byte inside an earlier frame: resync, lose only that frame."""
    ids, path, _ = _dead_writer_segment(spool_dir, 20)
    tail, items = read_whole(path)
    assert tail is not None
    tail.close()
    victim = items[7]
    assert isinstance(victim, Frame)
    with open(path, "r+b") as f:
        f.seek(victim.offset + 40)
        byte = f.read(1)
        f.seek(victim.offset + 40)
        f.write(bytes([byte[0] ^ 0xFF]))
    events, summary = inspect_spool(spool_dir)
    assert [e["messageId"] for e in events] == ids[:7] + ids[8:]
    assert skipped_bytes(summary) == victim.end - victim.offset
