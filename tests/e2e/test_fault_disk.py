"""A real full disk: the spool on a 2 MiB tmpfs, filled by a real producer process.

What must hold (docs/design.md, "Failures never raise"): the app never sees an exception, a call that could
not be written returns None and is counted as ``disk_error``, a short write is rolled back so every
segment still decodes frame by frame with nothing skipped, and once space comes back the same process
writes again and everything it was told was accepted is delivered exactly once, with the drop count
visible in ``rudder-fast status``.

Space comes back three ways: an operator deletes a filler file; ``rudder-fast-sender --drain`` is run on
the full disk (it delivers and deletes finished segments, the one thing that can free a spool); or a
sender that was already running when the disk filled finds its data plane again.

Needs root (``mount``); skipped otherwise. The RLIMIT_FSIZE flavour of ENOSPC/EFBIG is covered by
tests/io/test_producer_disk.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rudder_fast import config
from tests.support.delivery import assert_delivered_exactly, assert_wire_event
from tests.support.devserver import DevServer
from tests.support.processes import closed_port, stop_process, tail
from tests.support.producers import ProducerChild, fill_spool
from tests.support.sender import Senders, sender_env, wait_sender_ready
from tests.support.spool import dropped, dump_segment, segment_files, spool_files, status_json
from tests.support.waiting import wait_for

DISK_BYTES = 2 * 1024 * 1024
PAD = 500  # ~650-byte frames: about 3,000 fit on the disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test only (unmounted at teardown, whatever happened)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount are not installed")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def disk_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_until_full(producer: ProducerChild, tag: str) -> tuple[list[str], int]:
    """The producer calls until the disk refuses an event, then 300 more: (accepted ids, dropped)."""
    results = producer.emit(tag, 20_000, pad=PAD, until_none=True, after_none=300)
    first_none = results.index(None)
    accepted = [r for r in results if r is not None]
    assert accepted == results[:first_none], "an event was accepted while the disk was still full"
    nones = len(results) - first_none
    assert nones == 301
    stats = producer.stats()
    assert stats["dropped"] == {"disk_error": nones}, stats
    assert stats["accepted"] == len(accepted), stats
    return accepted, nones


def resume(producer: ProducerChild, tag: str) -> tuple[list[str], int]:
    """Space is back: calls succeed again once the producer's short back-off has passed (calls inside it
    are dropped and counted too), then every call succeeds. (accepted ids, calls dropped meanwhile)."""
    backoff_drops = 0

    def one_call() -> str | None:
        nonlocal backoff_drops
        got = producer.emit(tag, 1, pad=PAD)[0]
        backoff_drops += got is None
        return got

    first: str = wait_for(one_call, timeout=2 + 10 * config.DISK_ERROR_BACKOFF_S, interval=0.01)
    later = producer.emit(tag, 200, pad=PAD)
    assert None not in later, f"{later.count(None)} calls dropped after space came back"
    return [first] + [m for m in later if m is not None], backoff_drops


def assert_whole_frames_only(spool_dir: Path) -> None:
    """No partial frame anywhere: every byte of every segment is a whole, valid frame."""
    segments = segment_files(spool_dir)
    assert segments
    for path in segments:
        dump = dump_segment(path)
        assert dump.skips == [], f"{path.name}: {dump.skips}"
        assert dump.leftover == 0, f"{path.name}: {dump.leftover} bytes of a partial frame at the end"
    assert spool_files(spool_dir, "tmp") == [], "a half-created segment was left in tmp/"


def test_full_disk_then_an_operator_frees_space(
    small_disk: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    spool_dir = small_disk / "spool"
    filler = small_disk / "filler"
    filler.write_bytes(os.urandom(DISK_BYTES // 2))
    producer = ProducerChild(spool_dir)
    try:
        accepted, nones = fill_until_full(producer, "filler")
        assert disk_free(small_disk) < 8192
        assert_whole_frames_only(spool_dir)

        filler.unlink()
        later, backoff_drops = resume(producer, "after")
        accepted += later
        nones += backoff_drops
        assert producer.stats()["dropped"] == {"disk_error": nones}
        producer.call("close")
    finally:
        producer.stop()
    assert_whole_frames_only(spool_dir)
    # The drops that could not be recorded while the disk was full are on disk now, in drop markers
    # (in whichever segment: a short write makes the producer start a new one).
    recorded: dict[str, int] = {}
    for path in sorted((spool_dir / "segments").glob("*.seg")):
        for reason, n in dump_segment(path).drops.items():
            recorded[reason] = recorded.get(reason, 0) + n
    assert recorded == {"disk_error": nones}

    server = start_devserver()
    proc = senders.run(["--drain", "--drain-timeout", "60"], sender_env(spool_dir, server.url), timeout=90)
    assert proc.returncode == 0, tail(proc.stderr)
    received = server.received()
    assert_delivered_exactly(received, accepted)
    for event in received:
        assert_wire_event(event)
    doc = status_json(spool_dir)
    assert dropped(doc, "disk_error") == nones, doc["counters"]
    assert doc["counters"]["skipped_bytes"] == 0, doc["counters"]


@pytest.mark.parametrize("how", ["drain-on-the-full-disk", "running-sender-finds-its-data-plane"])
def test_full_disk_freed_by_the_sender_delivering_the_backlog(
    small_disk: Path, start_devserver: Callable[..., DevServer], senders: Senders, how: str
) -> None:
    spool_dir = small_disk / "spool"
    port = closed_port()
    sender = None
    if how == "running-sender-finds-its-data-plane":
        sender = senders.start([], sender_env(spool_dir, f"http://127.0.0.1:{port}"))
        wait_sender_ready(spool_dir, sender)
    # A backlog of finished segments (their producers exited) fills half the disk...
    backlog = fill_spool(spool_dir, 2, 800, payload=PAD)
    producer = ProducerChild(spool_dir)
    try:
        # ...and a live producer fills the rest.
        accepted, nones = fill_until_full(producer, "backlog")
        assert disk_free(small_disk) < 8192
        assert_whole_frames_only(spool_dir)
        finished = set(segment_files(spool_dir)) - {Path(producer.stats()["segment"])}
        assert len(finished) == 2

        if sender is None:
            server = start_devserver()
            proc = senders.run(
                ["--drain", "--drain-timeout", "60"], sender_env(spool_dir, server.url), timeout=90
            )
            assert proc.returncode == 0, f"the drain failed on the full disk:\n{tail(proc.stderr)}"
        else:
            # It has tried and failed while the disk was full (its status file cannot be rewritten
            # now, so its log says so), and only then does the data plane come back.
            wait_for(lambda: "backing off" in sender.stderr(), timeout=30)
            assert sender.proc.poll() is None, sender.stderr()
            server = start_devserver(extra_args=["--port", str(port)])
            wait_for(lambda: len(server.received()) >= len(backlog.ids) + len(accepted), timeout=60)
        assert not finished & set(segment_files(spool_dir)), "delivered segments were not deleted"
        assert disk_free(small_disk) > DISK_BYTES // 3

        later, backoff_drops = resume(producer, "after")
        accepted += later
        nones += backoff_drops
        assert producer.stats()["dropped"] == {"disk_error": nones}
        producer.call("close")
    finally:
        producer.stop()

    expected = backlog.ids + accepted
    if sender is None:
        proc = senders.run(
            ["--drain", "--drain-timeout", "60"], sender_env(spool_dir, server.url), timeout=90
        )
        assert proc.returncode == 0, tail(proc.stderr)
    else:
        wait_for(lambda: len(server.received()) >= len(expected), timeout=60)
        wait_for(lambda: segment_files(spool_dir) == [], timeout=30)
        assert stop_process(sender.proc) == 0, sender.stderr()
    received = server.received()
    assert_delivered_exactly(received, expected)
    for event in received:
        assert_wire_event(event)
    assert segment_files(spool_dir) == []
    doc = status_json(spool_dir)
    assert dropped(doc, "disk_error") == nones, doc["counters"]
    assert doc["counters"]["sent"] == len(expected), doc["counters"]
    assert doc["counters"]["skipped_bytes"] == 0, doc["counters"]


def test_a_ledger_that_cannot_be_committed_is_retried_every_second_and_logged_once_a_minute(
    small_disk: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    """The disk is full while the sender delivers a live producer's events: every acknowledged batch
    wants a ledger commit, and none fits. The commit is tried once a second, not at every turn of the
    loop, and the log says so once (it used to log an ERROR every 5-50 ms), then that it worked again."""
    spool_dir = small_disk / "spool"
    server = start_devserver()
    server.control({"latency_ms": 100})  # batches are acknowledged one after another, over seconds
    producer = ProducerChild(spool_dir)
    try:
        accepted, _ = fill_until_full(producer, "ledger")
        sender = senders.start(
            ["--max-batch-events", "100", "--concurrency", "1"], sender_env(spool_dir, server.url)
        )
        wait_for(
            lambda: any("] ERROR " in line and "ledger" in line for line in sender.stderr().splitlines()),
            timeout=30,
        )
        failing_since = time.monotonic()
        wait_for(lambda: time.monotonic() - failing_since > 3.0, timeout=10)
        errors = [line for line in sender.stderr().splitlines() if "] ERROR " in line]
        assert len(errors) <= 2, "\n".join(errors[:20])
        producer.call("close")  # its segment is finished: delivered and deleted, space comes back
    finally:
        producer.stop()
    wait_for(lambda: len(server.received()) >= len(accepted), timeout=60)
    wait_for(lambda: "the ledger is committed again" in sender.stderr(), timeout=30)
    assert stop_process(sender.proc) == 0, sender.stderr()
    assert_delivered_exactly(server.received(), accepted)


def fill_the_last_page(disk: Path) -> Path:
    """Takes whatever space is left on ``disk`` with a filler file: afterwards no file can grow."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (4096, 512, 1):
            try:
                while True:
                    f.write(b"x" * chunk)
            except OSError:
                pass
    assert disk_free(disk) == 0
    return filler


def test_a_drain_whose_last_ledger_commit_fails_exits_4_and_the_next_start_sends_again(
    small_disk: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    """A live producer's segment fills the disk: the drain delivers every event, but its segment may
    not be deleted (it is still being written) and no ledger fits. The drain must not claim success: it
    exits 4 and says the events go again; the next drain, with space back, sends them with the same
    messageIds and exits 0."""
    spool_dir = small_disk / "spool"
    server = start_devserver()
    reserve = small_disk / "reserve"  # deleted to give space back
    reserve.write_bytes(os.urandom(64 * 1024))
    producer = ProducerChild(spool_dir)
    try:
        accepted, _ = fill_until_full(producer, "unrecorded")
        filler = fill_the_last_page(small_disk)
        env = sender_env(spool_dir, server.url)
        proc = senders.run(["--drain", "--drain-timeout", "60"], env, timeout=90)
        assert proc.returncode == 4, tail(proc.stderr)
        assert_delivered_exactly(server.received(), accepted)
        assert "drain incomplete: the ledger could not record the last deliveries" in proc.stderr
        assert "is sent again at the next start, with the same messageIds" in proc.stderr
        assert not (spool_dir / "ledger").exists()

        filler.unlink()
        reserve.unlink()
        again = start_devserver()
        proc = senders.run(["--drain", "--drain-timeout", "60"], sender_env(spool_dir, again.url), timeout=90)
        assert proc.returncode == 0, tail(proc.stderr)
        assert "drain incomplete" not in proc.stderr
        assert_delivered_exactly(again.received(), accepted)  # the same messageIds, again
        assert (spool_dir / "ledger").exists()
    finally:
        producer.stop()
