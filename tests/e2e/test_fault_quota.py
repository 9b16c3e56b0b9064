"""The disk quota with the data plane down: drop, block, drop_oldest, and producers without a sender.

The data plane is "down" by pointing the real sender at a loopback port nothing listens on (connection
refused, retried with backoff); it "comes back" as a real devserver, either on that very port (the
running sender finds it at its next retry) or as a fresh sender run with ``--drain``. Every count is
checked through what a user sees: the calls' return values, ``rudder-fast status --json``, ``rudder-fast
inspect`` and what the devserver received.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rudder_fast import Emitter, config, quota
from rudder_fast.framing import HEADER_SIZE
from tests.support.delivery import assert_delivered_exactly, assert_wire_event
from tests.support.devserver import DevServer
from tests.support.processes import closed_port, stop_process
from tests.support.producers import fill_spool, fork_wave, track
from tests.support.sender import Senders, drain, sender_env, wait_sender_ready
from tests.support.spool import dropped, inspect_spool, read_status, segment_files, status_json
from tests.support.waiting import wait_for

# Per-test timeout above the default: waits of up to 60 s on the quota, then 90 s drains.
pytestmark = pytest.mark.timeout(300)

QUOTA = 256 * 1024
PAD = "x" * 400  # ~560-byte frames: the quota is crossed after ~470 calls
PACE_S = 0.001  # a steady producer (~1,000 calls/s) so that "how long after crossing" is measurable
FLAG_LAG_MAX_S = 1.0  # the sender rescans every 0.2 s: expect 0.2-0.5 s; 2x slack for a loaded machine
NO_SENDER_LAG_MAX_S = 1.6  # producers measure once a second on their own


@pytest.fixture(autouse=True)
def _no_quota_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process emitters read $RUDDER_FAST_QUOTA_BYTES: a caller's value must not leak in."""
    monkeypatch.delenv(config.ENV_QUOTA_BYTES, raising=False)
    monkeypatch.delenv(config.ENV_ON_FULL, raising=False)


def usage(spool_dir: Path) -> int:
    """Unacknowledged bytes while nothing can be acknowledged: the segments' total size."""
    total = 0
    for path in segment_files(spool_dir):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


def unacknowledged(spool_dir: Path) -> int:
    """What ``--quota-bytes`` bounds while nothing can be acknowledged: each segment's bytes after its
    header (the sender reads a segment from its first frame: the header is never pending)."""
    total = 0
    for path in segment_files(spool_dir):
        try:
            total += max(0, path.stat().st_size - HEADER_SIZE)
        except FileNotFoundError:
            pass
    return total


def emit_until_dropped(
    emitter: Emitter, spool_dir: Path, limit: int, tag: str, timeout: float = 60.0
) -> tuple[list[str], float, float, float]:
    """Paced calls until one returns None: (accepted ids, when usage crossed ``limit``, when the first
    call returned None, how long that call took)."""
    accepted: list[str] = []
    crossed_at: float | None = None
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        assert time.monotonic() < deadline, (
            f"no call was dropped within {timeout} s ({len(accepted)} accepted)"
        )
        t0 = time.monotonic()
        mid = track(emitter, tag, n, PAD)
        t1 = time.monotonic()
        n += 1
        if mid is None:
            assert crossed_at is not None, f"dropped at {usage(spool_dir)} bytes, under the quota {limit}"
            return accepted, crossed_at, t1, t1 - t0
        accepted.append(mid)
        if crossed_at is None and usage(spool_dir) >= limit:
            crossed_at = t1
        time.sleep(PACE_S)


def down_env(spool_dir: Path) -> tuple[dict[str, str], int]:
    port = closed_port()
    return sender_env(spool_dir, f"http://127.0.0.1:{port}"), port


def wait_status_drops(spool_dir: Path, reason: str, expected: int, timeout: float = 15.0) -> dict[str, Any]:
    """``status --json`` reports ``expected`` drops for ``reason`` (the sender's snapshot lags by <= 1 s)."""
    last: dict[str, Any] = {}

    def check() -> bool:
        nonlocal last
        last = status_json(spool_dir)
        return dropped(last, reason) == expected

    try:
        wait_for(check, timeout=timeout, interval=0.2)
    except AssertionError:
        raise AssertionError(
            f"status reports {last['counters']['dropped']}, expected {reason}={expected}"
        ) from None
    return last


def test_drop_at_the_quota_counts_every_dropped_call_and_loses_no_accepted_event(
    start_devserver: Callable[..., DevServer], senders: Senders, spool_dir: Path
) -> None:
    env, _ = down_env(spool_dir)
    sender = senders.start(["--quota-bytes", "256K"], env)
    wait_sender_ready(spool_dir, sender)

    emitter = Emitter(spool_dir)
    try:
        accepted, crossed_at, first_drop_at, first_drop_took = emit_until_dropped(
            emitter, spool_dir, QUOTA, "drop"
        )
        lag = first_drop_at - crossed_at
        print(f"\nover quota flagged {lag:.3f} s after crossing; {usage(spool_dir) - QUOTA} bytes overshoot")
        assert lag <= FLAG_LAG_MAX_S, f"producers were stopped {lag:.2f} s after the spool crossed the quota"
        assert first_drop_took < 0.25, f"a dropped call took {first_drop_took:.3f} s with on_full=drop"
        later = [track(emitter, "drop-later", n, PAD) for n in range(300)]
        assert later == [None] * 300, "calls were accepted while the spool is over its quota"
        nones = 1 + len(later)
        assert emitter.stats()["dropped"] == {"quota": nones}
    finally:
        emitter.close()

    # What the user sees while the data plane is still down: the drops, counted exactly once.
    doc = wait_status_drops(spool_dir, "quota", nones)
    assert doc["counters"]["dropped"]["total"] == nones, doc["counters"]
    pending, _ = inspect_spool(spool_dir)
    assert sorted(e["messageId"] for e in pending) == sorted(accepted), "pending events != accepted calls"
    assert stop_process(sender.proc) == 0, sender.stderr()
    assert dropped(status_json(spool_dir), "quota") == nones  # from the ledger, with no sender running

    # The data plane is back: everything accepted arrives, once.
    server = start_devserver()
    drain(senders, spool_dir, server)
    received = server.received()
    assert_delivered_exactly(received, accepted)
    for event in received:
        assert_wire_event(event)
    doc = status_json(spool_dir)
    assert dropped(doc, "quota") == nones, doc["counters"]
    assert doc["counters"]["sent"] == len(accepted), doc["counters"]
    assert doc["backlog"]["events"] == 0, doc["backlog"]


def test_block_waits_for_room_and_resumes_when_the_data_plane_comes_back(
    start_devserver: Callable[..., DevServer], senders: Senders, spool_dir: Path
) -> None:
    block_timeout = 1.0
    env, port = down_env(spool_dir)
    sender = senders.start(["--quota-bytes", "256K"], env)
    wait_sender_ready(spool_dir, sender)

    short = Emitter(spool_dir, on_full="block", block_timeout=block_timeout)
    patient = Emitter(spool_dir, on_full="block", block_timeout=60.0)
    try:
        accepted, crossed_at, first_drop_at, first_drop_took = emit_until_dropped(
            short, spool_dir, QUOTA, "block"
        )
        print(f"\nfirst blocked call took {first_drop_took:.3f} s (block_timeout {block_timeout})")
        # Detection lag includes the first blocked call itself.
        assert first_drop_at - first_drop_took - crossed_at <= FLAG_LAG_MAX_S
        assert block_timeout * 0.95 <= first_drop_took <= block_timeout + 1.0, first_drop_took
        timings = []
        for n in range(2):
            t0 = time.monotonic()
            assert track(short, "block-again", n, PAD) is None
            timings.append(time.monotonic() - t0)
        assert all(block_timeout * 0.95 <= t <= block_timeout + 1.0 for t in timings), timings
        nones = 3
        assert short.stats()["dropped"] == {"quota": nones}

        control = quota.read_control(spool_dir / "control")
        assert control is not None, control
        assert control.flags & quota.OVER_QUOTA, control

        # A call blocks; meanwhile the data plane comes back on the port the sender keeps retrying.
        outcome: dict[str, object] = {}

        def blocked_call() -> None:
            try:
                outcome["id"] = track(patient, "patient", 0, PAD)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc
            outcome["returned_at"] = time.monotonic()

        caller = threading.Thread(target=blocked_call, daemon=True)
        started_at = time.monotonic()
        caller.start()
        caller.join(0.5)
        assert caller.is_alive(), f"the call did not block over the quota: {outcome}"
        restored_at = time.monotonic()
        server = start_devserver(extra_args=["--port", str(port)])
        caller.join(60.0)
        assert not caller.is_alive(), "the blocked call never returned"
        assert "error" not in outcome, outcome
        mid = outcome["id"]
        assert isinstance(mid, str), f"the blocked call was dropped although room came back: {outcome}"
        returned_at = outcome["returned_at"]
        assert isinstance(returned_at, float)
        assert returned_at >= restored_at
        print(
            f"blocked call returned {returned_at - restored_at:.2f} s after the data plane came back "
            f"({returned_at - started_at:.2f} s in all)"
        )
        accepted.append(mid)
        more = [track(patient, "patient-after", n, PAD) for n in range(50)]
        assert None not in more
        accepted += [m for m in more if m is not None]
    finally:
        short.close()
        patient.close()

    wait_for(lambda: len(server.received()) >= len(accepted), timeout=60, interval=0.1)
    assert_delivered_exactly(server.received(), accepted)
    wait_status_drops(spool_dir, "quota", nones)
    assert stop_process(sender.proc) == 0, sender.stderr()
    doc = status_json(spool_dir)
    assert dropped(doc, "quota") == nones, doc["counters"]
    assert doc["counters"]["sent"] == len(accepted), doc["counters"]


def test_drop_oldest_deletes_the_oldest_finished_segments_and_keeps_the_newest(
    start_devserver: Callable[..., DevServer], senders: Senders, spool_dir: Path
) -> None:
    producers, per_producer = 12, 100
    env, _ = down_env(spool_dir)
    # One small batch in flight at a time: the events the sender is trying to deliver (the oldest
    # producer's first ones) are few and are kept; everything else is fair game, oldest first.
    sender = senders.start(
        [
            "--quota-bytes",
            "256K",
            "--on-full",
            "drop_oldest",
            "--concurrency",
            "1",
            "--max-batch-events",
            "20",
        ],
        env,
    )
    wait_sender_ready(spool_dir, sender)

    order: list[list[str]] = []  # messageIds per producer, oldest producer first
    for i in range(producers):
        produced = fill_spool(spool_dir, 1, per_producer, payload=500)  # one process; exits
        order.append(produced.ids)
        if i == 0:  # the oldest producer's first events are in flight (the data plane refuses them)
            wait_for(lambda: (read_status(spool_dir) or {}).get("state") == "backoff", timeout=10)
        # Producers come one after another, as the sender enforces the quota (within a rescan).
        wait_for(lambda: usage(spool_dir) < QUOTA, timeout=10)
    accepted = [mid for ids in order for mid in ids]
    total = usage(spool_dir)
    print(f"\n{len(accepted)} events accepted; {total} bytes left on disk")

    def settled() -> bool:
        doc = status_json(spool_dir)
        return usage(spool_dir) < QUOTA and dropped(doc, "oldest") + doc["backlog"]["events"] == len(accepted)

    wait_for(settled, timeout=30, interval=0.2)
    assert stop_process(sender.proc) == 0, sender.stderr()
    lost = dropped(status_json(spool_dir), "oldest")
    assert lost > 0, "nothing was deleted although the spool went far over its quota"

    server = start_devserver()
    drain(senders, spool_dir, server)
    received = server.received()
    delivered = {e["messageId"] for e in received}
    assert len(received) == len(delivered), "duplicates"
    assert delivered <= set(accepted), "unknown events"
    assert len(delivered) + lost == len(accepted), (len(delivered), lost, len(accepted))
    assert dropped(status_json(spool_dir), "oldest") == lost

    # Whole producers (segments) were kept or deleted; the deleted ones are the oldest, except at most
    # the one the sender was delivering when the quota was hit.
    kept = []
    for i, ids in enumerate(order):
        got = delivered & set(ids)
        assert len(got) in (0, len(ids)), f"producer {i}: {len(got)} of {len(ids)} delivered"
        kept.append(bool(got))
    print("kept per producer (oldest first):", "".join("K" if k else "-" for k in kept))
    deleted = [i for i, k in enumerate(kept) if not k]
    assert deleted, kept
    assert kept[-1], "the newest producer's events were deleted"
    assert deleted == list(range(deleted[0], deleted[-1] + 1)), f"not oldest-first: {kept}"
    assert deleted[0] <= 1, f"newer segments were deleted while older ones were kept: {kept}"
    assert sum(len(order[i]) for i in deleted) == lost


def test_without_a_sender_producers_measure_the_quota_themselves(spool_dir: Path) -> None:
    limit = 64 * 1024
    emitter = Emitter(spool_dir, quota_bytes=limit)
    try:
        accepted, crossed_at, first_drop_at, _ = emit_until_dropped(emitter, spool_dir, limit, "nosender")
        lag = first_drop_at - crossed_at
        print(f"\nno sender: dropping began {lag:.3f} s after crossing the quota")
        assert lag <= NO_SENDER_LAG_MAX_S, lag
        later = [track(emitter, "nosender-later", n, PAD) for n in range(100)]
        assert later == [None] * 100
        nones = 101
        assert emitter.stats()["dropped"] == {"quota": nones}
    finally:
        emitter.close()
    doc = status_json(spool_dir)
    assert dropped(doc, "quota") == nones, doc["counters"]
    assert doc["backlog"]["events"] == len(accepted), doc["backlog"]
    assert doc["sender"]["state"] == "not running"


def test_without_a_sender_producers_write_again_once_the_spool_is_drained(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    """The README (`--quota-bytes`): producers drop at the quota and resume below 90 % of it.
    Here the space comes back by a one-off ``--drain`` while the producer keeps calling."""
    limit = 64 * 1024
    emitter = Emitter(spool_dir, quota_bytes=limit)
    try:
        accepted, _, _, _ = emit_until_dropped(emitter, spool_dir, limit, "resume")
        drain(senders, spool_dir, devserver)
        assert_delivered_exactly(devserver.received(), accepted)
        doc = status_json(spool_dir)
        assert doc["backlog"]["bytes"] < limit * quota.RESUME_FRACTION, doc["backlog"]

        results: list[str | None] = []

        def resumed() -> bool:
            results.append(track(emitter, "resume-after", len(results), PAD))
            return results[-1] is not None

        wait_for(resumed, timeout=5.0, interval=0.05)  # producers re-measure once a second
        accepted.append(results[-1])  # type: ignore[arg-type]
    finally:
        emitter.close()
    drain(senders, spool_dir, devserver)
    assert_delivered_exactly(devserver.received(), accepted)


FROZEN_FOR_S = 7.0  # longer than a publication stays fresh (quota.STALE_NS, 5 s)


@pytest.mark.parametrize("producers", [1, 3])
def test_a_frozen_sender_does_not_switch_the_quota_off(
    senders: Senders, spool_dir: Path, producers: int
) -> None:
    """SIGSTOP the sender (as ``docker pause``, a debugger or a hang would) while producers write flat
    out: each producer writes at most one allowance past the last measurement (README: at most
    producers x quota), then drops, however long the sender stays frozen."""
    env, _ = down_env(spool_dir)
    sender = senders.start(["--quota-bytes", "1M"], env)
    wait_sender_ready(spool_dir, sender)
    limit = 1024 * 1024
    os.kill(sender.pid, signal.SIGSTOP)
    try:
        accepted = run_flat_out(spool_dir, producers, FROZEN_FOR_S)
        used = usage(spool_dir)
    finally:
        os.kill(sender.pid, signal.SIGCONT)
    print(f"\n{producers} producer(s), sender frozen {FROZEN_FOR_S} s: {accepted} accepted, {used:,} bytes")
    assert used <= limit * (producers + 1), f"{used:,} bytes written against a 1 MiB quota"
    assert stop_process(sender.proc) == 0, sender.stderr()


def _flat_out(spool: str, seconds: float, report: Any) -> None:
    emitter = Emitter(spool)
    accepted = 0
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        if track(emitter, "frozen", n, PAD) is not None:
            accepted += 1
        n += 1
    emitter.close()
    report.send(accepted)


def run_flat_out(spool_dir: Path, producers: int, seconds: float) -> int:
    """``producers`` forked processes calling track as fast as they can for ``seconds``: how many calls
    were accepted in all."""
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    try:
        for _ in range(producers):
            receive, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_flat_out, args=(str(spool_dir), seconds, send), daemon=True)
            p.start()
            pipes.append(receive)
            procs.append(p)
        total = 0
        for receive in pipes:
            assert receive.poll(seconds + 60), "a producer did not report"
            total += receive.recv()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0, p.exitcode
        return total
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


def test_status_counts_every_accepted_event_under_drop_oldest(senders: Senders, spool_dir: Path) -> None:
    """200 one-event processes while the sender deletes the oldest: ``accepted`` counts what producers
    accepted (the deleted ones too), not just what is left to deliver."""
    env, _ = down_env(spool_dir)
    args = [
        "--quota-bytes",
        "32K",
        "--on-full",
        "drop_oldest",
        "--concurrency",
        "1",
        "--max-batch-events",
        "5",
    ]
    sender = senders.start(args, env)
    wait_sender_ready(spool_dir, sender)
    ids = fork_wave(spool_dir, 200, 1, tag="oldest", pad=400, close=lambda i: True)

    last: dict[str, Any] = {}

    def settled() -> bool:
        # The sender's counters in `status` are its snapshot of the last second: wait for one taken
        # after the deletions settled.
        nonlocal last
        last = status_json(spool_dir)
        deleted = dropped(last, "oldest") > 0 and unacknowledged(spool_dir) < 32 * 1024
        return deleted and last["counters"]["accepted"] == len(ids)

    try:
        wait_for(settled, timeout=60, interval=0.2)
    except AssertionError:
        raise AssertionError(f"status never counted {len(ids)} accepted: {last}") from None
    c = last["counters"]
    lost = dropped(last, "oldest")
    print(f"\naccepted {c['accepted']}, pending {last['backlog']['events']}, deleted {lost}")
    assert c["accepted"] == c["sent"] + c["rejected"] + last["backlog"]["events"] + lost, (c, last["backlog"])
    assert stop_process(sender.proc) == 0, sender.stderr()
