"""The whole pipeline on the happy path: producer processes → spool → the real sender → the devserver.

Every check is on what crossed the wire (the devserver's ``--out`` file and ``/_stats``) and on what
the real ``rudder-fast inspect`` says is left, never on the sender's internals.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.delivery import assert_exactly_once, assert_spool_empty, assert_valid_wire_event, iso_ms
from tests.support.devserver import DevServer
from tests.support.processes import stop_process, tail
from tests.support.producers import fill_spool
from tests.support.sender import Senders, sender_env
from tests.support.spool import inspect_spool, read_rejected, read_status
from tests.support.waiting import wait_for

# Per-test timeout above the default: drains of 20,000 events with a 120 s deadline.
pytestmark = pytest.mark.timeout(300)

PRODUCERS = 4
PER_PRODUCER = 5_000


@pytest.mark.parametrize(
    ("gzip", "suffix", "via"),
    [
        pytest.param(True, "", "env", id="gzip-base-url-from-env"),
        pytest.param(False, "/v1/batch", "args", id="no-gzip-batch-url-from-args"),
    ],
)
def test_drain_delivers_every_event_exactly_once(
    devserver: DevServer, senders: Senders, spool_dir: Path, gzip: bool, suffix: str, via: str
) -> None:
    produced = fill_spool(spool_dir, PRODUCERS, PER_PRODUCER)
    pending, _ = inspect_spool(spool_dir)
    assert len(pending) == PRODUCERS * PER_PRODUCER

    url = devserver.url + suffix
    args = ["--drain", "--drain-timeout", "90"]
    if not gzip:
        args.append("--no-gzip")
    if via == "env":
        env = sender_env(spool_dir, url, write_key="e2e-key")
    else:
        env = sender_env(spool_dir, None, write_key=None)
        args += ["--spool-dir", str(spool_dir), "--data-plane-url", url, "--write-key", "e2e-key"]
    proc = senders.run(args, env, timeout=120)
    assert proc.returncode == 0, tail(proc.stderr)

    received = devserver.received()
    assert_exactly_once(received, produced)
    for event in received:
        assert_valid_wire_event(event)
        mid = event["messageId"]
        user_id = produced.user_of[mid]
        if user_id is not None:
            assert event["userId"] == user_id
        before, after = produced.window_ms[mid]
        assert before <= iso_ms(event["originalTimestamp"]) <= after, (event, before, after)

    stats = devserver.stats()
    assert stats["by_status"] == {"200": stats["requests"]}, stats
    assert stats["events"] == PRODUCERS * PER_PRODUCER, stats
    if gzip:
        assert stats["gzip_requests"] > 0, stats
        assert stats["plain_requests"] == 0, stats
    else:
        assert stats["plain_requests"] > 0, stats
        assert stats["gzip_requests"] == 0, stats

    assert_spool_empty(spool_dir)
    assert read_rejected(spool_dir) == []
    status = read_status(spool_dir)
    assert status is not None, status
    assert status["counters"]["sent"] == PRODUCERS * PER_PRODUCER, status


def test_second_sender_on_the_same_spool_exits_3(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    produced = fill_spool(spool_dir, 1, 200)
    env = sender_env(spool_dir, devserver.url)
    first = senders.start([], env)
    try:
        wait_for(lambda: (spool_dir / "status").exists() or first.proc.poll() is not None, timeout=30)
        assert first.proc.poll() is None, first.stderr()

        second = senders.run([], env, timeout=30)
        assert second.returncode == 3, (second.returncode, second.stderr)
        second_drain = senders.run(["--drain"], env, timeout=30)
        assert second_drain.returncode == 3, (second_drain.returncode, second_drain.stderr)

        # The first one is unaffected: it delivers everything and stops cleanly on SIGTERM.
        wait_for(lambda: len(devserver.received()) >= len(produced.ids), timeout=30)
        assert first.proc.poll() is None, first.stderr()
    finally:
        code = stop_process(first.proc)
    assert code == 0, first.stderr()
    assert_exactly_once(devserver.received(), produced)


def test_drain_sends_the_last_partial_batch_while_every_worker_is_busy(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    """Five batches for four workers, slow answers: the last, partial batch is complete (the spool is
    read to its end) while all four workers are busy. It must still be sent once one of them is free."""
    produced = fill_spool(spool_dir, 1, 450)
    devserver.control({"latency_ms": 500})
    args = ["--drain", "--drain-timeout", "15", "--max-batch-events", "100", "--concurrency", "4"]
    proc = senders.run(args, sender_env(spool_dir, devserver.url), timeout=60)
    assert proc.returncode == 0, (devserver.stats(), tail(proc.stderr))
    assert_exactly_once(devserver.received(), produced)
    assert_spool_empty(spool_dir)


def test_the_last_events_of_a_job_go_without_waiting_for_the_linger(
    spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    """A running sender with a linger of a minute: producers that emit a few events and exit (their
    files sealed) have them delivered at once, not a minute later. Nothing else could join the batch."""
    sender = senders.start(["--linger", "60"], sender_env(spool_dir, devserver.url))
    produced = fill_spool(spool_dir, processes=2, per_process=25)
    assert sender.proc.poll() is None, sender.stderr()
    wait_for(lambda: devserver.stats()["events"] == 50, timeout=20)
    assert_exactly_once(devserver.received(), produced)
