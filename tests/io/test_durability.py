"""The sender's segment syncer (``rudder_fast.durability.Syncer``) on real files: what it keeps open, and
that a deleted segment's space is free the moment the sender deletes it (on a full disk the ledger
commit that follows needs that space; tests/e2e/test_fault_disk.py shows it end to end)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rudder_fast.durability import Syncer


@contextlib.contextmanager
def following(segments: Path, interval: float) -> Iterator[Syncer]:
    """A syncer following one real segment, ``a.seg``, through the sender's own descriptor."""
    path = segments / "a.seg"
    path.write_bytes(b"x" * 4096)
    reader = os.open(path, os.O_RDONLY)
    syncer = Syncer(segments, interval=interval)
    try:
        syncer.follow({"a.seg": reader})
        yield syncer
    finally:
        os.close(reader)
        syncer.close()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def segments(tmp_path: Path) -> Path:
    path = tmp_path / "segments"
    path.mkdir()
    return path


def test_a_deleted_segment_is_let_go_at_once(segments: Path) -> None:
    with following(segments, interval=3600) as syncer:  # no pass runs during the test
        held = syncer._followed["a.seg"].fd
        assert _is_open(held)
        (segments / "a.seg").unlink()
        syncer.deleted("a.seg")
        assert not _is_open(held), "the syncer still holds the deleted segment (its blocks stay in use)"
        syncer.sync_deletions()
        assert syncer.dir_syncs == 1


def test_deletion_waits_for_the_pass_in_progress(segments: Path) -> None:
    """A pass syncs descriptors it took under the lock: the one being deleted is closed only after it."""
    with following(segments, interval=3600) as syncer:
        held = syncer._followed["a.seg"].fd
        with syncer._lock:
            syncer._in_pass = True  # as the thread sets it when a pass starts
        done = threading.Event()

        def delete() -> None:
            syncer.deleted("a.seg")
            done.set()

        worker = threading.Thread(target=delete)
        worker.start()
        assert not done.wait(0.2), "deleted() closed a descriptor while a pass could be using it"
        assert _is_open(held)
        with syncer._pass_over:
            syncer._in_pass = False
            syncer._pass_over.notify_all()
        assert done.wait(10)
        worker.join(10)
        assert not _is_open(held)


def test_interval_zero_follows_nothing(segments: Path) -> None:
    with following(segments, interval=0) as syncer:
        assert syncer._followed == {}
        syncer.deleted("a.seg")  # nothing held: only the deletion is remembered for the next commit
        syncer.sync_deletions()
        assert syncer.dir_syncs == 1
        assert syncer.file_syncs == 0
