"""Process churn: many short-lived producers, each with its own segment, while the sender runs.

Prefork servers recycle workers, cron jobs and task queues spawn a process per job: thousands of tiny
segments, each written by a process that lives a moment. Every event must arrive exactly once, the
sender must delete each segment once it is delivered (no pile-up of files, nothing left in ``tmp/``),
and a backlog of thousands of finished segments must drain in reasonable time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rudder_fast import Emitter
from tests.support.delivery import assert_delivered_exactly, assert_wire_event
from tests.support.devserver import DevServer
from tests.support.processes import stop_process, tail
from tests.support.producers import fill_spool, fork_wave, track
from tests.support.sender import Senders, drain, sender_env, wait_sender_ready
from tests.support.spool import segment_files, spool_files
from tests.support.waiting import wait_for

# Per-test timeout above the default: a thousand producer processes, drains of up to 120 s.
pytestmark = pytest.mark.timeout(300)

WAVE = 20  # processes alive at once: enough churn, without drowning 2 cores in fork()s


def drain_and_check_empty(senders: Senders, spool_dir: Path, server: DevServer) -> None:
    drain(senders, spool_dir, server)
    assert spool_files(spool_dir, "segments") == [], "segments/ is not empty after a drain"
    assert spool_files(spool_dir, "tmp") == [], "tmp/ is not empty after a drain"


def test_300_short_lived_processes_of_10_events_each(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    processes, per_process = 300, 10
    sender = senders.start([], sender_env(spool_dir, devserver.url))
    wait_sender_ready(spool_dir, sender)
    ids: list[str] = []
    t0 = time.monotonic()
    for _ in range(processes // WAVE):
        ids += fill_spool(spool_dir, WAVE, per_process).ids  # multiprocessing, fork; half seal, half exit
    produced_s = time.monotonic() - t0
    assert len(set(ids)) == processes * per_process

    wait_for(lambda: len(devserver.received()) >= len(ids), timeout=60, interval=0.1)
    caught_up_s = time.monotonic() - t0
    print(f"\n{processes} processes in {produced_s:.1f} s; all delivered after {caught_up_s:.1f} s")
    wait_for(lambda: segment_files(spool_dir) == [], timeout=30, interval=0.1)
    assert stop_process(sender.proc) == 0, sender.stderr()
    received = devserver.received()
    assert_delivered_exactly(received, ids)
    drain_and_check_empty(senders, spool_dir, devserver)
    assert len(devserver.received()) == len(ids), "the drain resent events"


def test_1000_processes_of_one_event_leave_no_pile_up(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    processes = 1000
    sender = senders.start([], sender_env(spool_dir, devserver.url))
    wait_sender_ready(spool_dir, sender)
    ids: list[str] = []
    most = 0
    t0 = time.monotonic()
    for first in range(0, processes, WAVE):
        ids += fork_wave(spool_dir, WAVE, 1, tag="one", first=first)
        most = max(most, len(segment_files(spool_dir)))
    produced_s = time.monotonic() - t0
    assert len(set(ids)) == processes

    # Once the sender has caught up, no file is left behind: every finished segment was deleted.
    wait_for(lambda: len(devserver.received()) >= processes, timeout=60, interval=0.1)
    wait_for(lambda: segment_files(spool_dir) == [], timeout=30, interval=0.1)
    print(
        f"\n{processes} one-event processes in {produced_s:.1f} s; at most {most} segment files at once; "
        f"empty {time.monotonic() - t0:.1f} s after the first"
    )
    assert stop_process(sender.proc) == 0, sender.stderr()
    assert_delivered_exactly(devserver.received(), ids)
    assert spool_files(spool_dir, "tmp") == []


def test_drain_of_3000_finished_segments(devserver: DevServer, senders: Senders, spool_dir: Path) -> None:
    segments = 3000
    t0 = time.monotonic()
    ids = []
    for n in range(segments):
        emitter = Emitter(spool_dir)  # each its own nonce, hence its own segment file
        mid = track(emitter, "scan", n)
        assert mid is not None
        ids.append(mid)
        emitter.close()
    made_s = time.monotonic() - t0
    assert len(segment_files(spool_dir)) == segments

    t0 = time.monotonic()
    proc = senders.run(
        ["--drain", "--drain-timeout", "110"], sender_env(spool_dir, devserver.url), timeout=120
    )
    took = time.monotonic() - t0
    assert proc.returncode == 0, tail(proc.stderr)
    print(
        f"\n{segments} finished one-event segments (made in {made_s:.1f} s) drained in {took:.2f} s: "
        f"{segments / took:,.0f} events/s, {took / segments * 1e3:.2f} ms per segment"
    )
    received = devserver.received()
    assert_delivered_exactly(received, ids)
    for event in received[:50]:
        assert_wire_event(event)
    assert spool_files(spool_dir, "segments") == []
    assert spool_files(spool_dir, "tmp") == []
