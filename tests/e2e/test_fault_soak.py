"""Soak: producers and one sender running together while the data plane flaps.

Three producer processes emit at a paced rate (``rudder_fast.emit.track``, spool from
RUDDER_FAST_SPOOL_DIR), each appending the messageId of every call that returned to its report file. One
``rudder-fast-sender`` runs in the background. A flapper thread cycles the devserver through 503 for
~1 s, down (connection refused) for ~1 s, 200 ms latency for ~1 s and healthy for ~2 s, for
``SOAK_SECONDS``. Then the producers stop, the devserver stays healthy, and the test waits (with a
deadline) until every accepted event is delivered, then SIGTERMs the sender (exit 0). Checks:

- delivered set == accepted set (no loss, nothing unknown);
- duplicates (a resend after the server stored a batch but the answer was lost) printed, <= 5% of
  the events and <= (times the port closed) x 4 in flight x 100 events per batch (the sender runs with
  ``--max-batch-events 100`` so one unlucky cut stays small);
- the sender's RSS, sampled every second with psutil, stays flat: max in the second half
  <= 1.5 x max in the first half + 20 MB.

``SOAK_SECONDS`` is ``$RUDDER_FAST_SOAK_SECONDS`` (default 30, the CI setting). Longer soaks run with
e.g. ``RUDDER_FAST_SOAK_SECONDS=600 .venv/bin/python -m pytest tests/e2e/test_fault_soak.py -s``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.devserver import DevServer, OutTail
from tests.support.processes import REPO_ROOT, ProcGroup
from tests.support.producers import producer_env, read_id_report
from tests.support.programs import program_command
from tests.support.sender import Senders, sender_env
from tests.support.soak import Flapper, RssSampler

SOAK_SECONDS = float(os.environ.get("RUDDER_FAST_SOAK_SECONDS") or 30)
# Per-test timeout above the default: the soak runs SOAK_SECONDS, then drains and checks memory.
pytestmark = pytest.mark.timeout(300 + 3 * SOAK_SECONDS)

PRODUCERS = 3
RATE_PER_PRODUCER = 250.0  # events a second
DELIVERY_DEADLINE_S = 90.0
MAX_DUPLICATE_FRACTION = 0.05
# A duplicate needs a request the devserver stored but whose answer was lost (the port closed under
# it): each such request repeats one batch. Small batches keep one unlucky cut well under the 5% bound.
MAX_BATCH_EVENTS = 100
CONCURRENCY = 4  # the sender's default requests in flight


@pytest.mark.slow
def test_soak_flapping_data_plane_loses_nothing_and_memory_stays_flat(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    sender = senders.start(
        ["--max-batch-events", str(MAX_BATCH_EVENTS)], sender_env(spool_dir, devserver.url)
    )
    rss = RssSampler(sender.pid, interval=1.0)
    rss.start()
    flapper = Flapper(devserver)
    reports = tmp_path / "reports"
    reports.mkdir()
    try:
        with ProcGroup(tmp_path) as procs:
            env = producer_env(spool_dir)
            for k in range(PRODUCERS):
                cmd = program_command("paced", reports / f"{k}.ids", k, RATE_PER_PRODUCER, SOAK_SECONDS)
                procs.start(f"paced-{k}", cmd, env=env, cwd=REPO_ROOT)
            flapper.start()
            deadline = time.monotonic() + SOAK_SECONDS + 60
            for k in range(PRODUCERS):
                proc = procs.procs[f"paced-{k}"]
                code = proc.wait(max(1.0, deadline - time.monotonic()))
                assert code == 0, f"producer {k} exit {code}:\n{procs.log(f'paced-{k}')}"
        flapper.stop()
        assert flapper.error is None, flapper.error
        assert flapper.down_seen >= 1, "the devserver's port was never seen closed"
        assert sender.proc.poll() is None, f"the sender died during the soak:\n{sender.stderr()[-4000:]}"

        accepted: set[str] = set()
        for k in range(PRODUCERS):
            ids = read_id_report(reports / f"{k}.ids")
            assert "None" not in ids, f"producer {k} had events dropped"
            accepted.update(ids)
        expected_min = PRODUCERS * RATE_PER_PRODUCER * SOAK_SECONDS * 0.5
        assert len(accepted) >= expected_min, (len(accepted), expected_min)

        out = OutTail(devserver.out_path)

        def all_delivered() -> bool:
            out.poll()
            assert sender.proc.poll() is None, f"the sender died:\n{sender.stderr()[-4000:]}"
            return accepted <= out.ids

        t0 = time.monotonic()
        while not all_delivered() and time.monotonic() - t0 < DELIVERY_DEADLINE_S:
            time.sleep(0.25)  # past the deadline, the checks below say what is missing
        caught_up = time.monotonic() - t0
    finally:
        if flapper.is_alive():
            with contextlib.suppress(Exception):  # do not hide the failure that brought us here
                flapper.stop()
        rss.stop()
    sender.proc.send_signal(signal.SIGTERM)
    code = sender.wait(30)
    assert code == 0, f"sender exit {code} on SIGTERM:\n{sender.stderr()[-4000:]}"
    out.poll()

    stats = devserver.stats()
    missing = accepted - out.ids
    unknown = out.ids - accepted
    print(
        f"\nsoak {SOAK_SECONDS:.0f} s, {flapper.cycles} flap cycles: {len(accepted)} accepted, "
        f"{len(out.ids)} delivered, {out.duplicates} duplicates, waited {caught_up:.1f} s for "
        f"delivery after the producers stopped; devserver: {stats['requests']} requests, "
        f"by status {stats['by_status']}"
    )
    assert not missing, f"{len(missing)} accepted events lost, e.g. {sorted(missing)[:5]}"
    assert not unknown, f"{len(unknown)} events delivered that nobody accepted, e.g. {sorted(unknown)[:5]}"
    # Hard bound: each closing of the port cuts at most CONCURRENCY requests of <= MAX_BATCH_EVENTS.
    cut_bound = flapper.down_seen * CONCURRENCY * MAX_BATCH_EVENTS
    assert out.duplicates <= cut_bound, (out.duplicates, cut_bound)
    assert out.duplicates <= MAX_DUPLICATE_FRACTION * len(accepted), (out.duplicates, len(accepted))
    faults = {s: n for s, n in stats["by_status"].items() if s != "200"}
    assert faults.get("503", 0) > 0, f"the flapper never made the sender see a 503: {stats}"

    assert rss.error is None, rss.error
    samples = [r for _, r in rss.samples]
    assert len(samples) >= max(4, SOAK_SECONDS * 0.8), f"too few RSS samples: {len(samples)}"
    half = len(samples) // 2
    first, second = max(samples[:half]), max(samples[half:])
    mib = 2**20
    print(
        f"sender RSS: first half max {first / mib:.1f} MiB, second half max {second / mib:.1f} MiB "
        f"({len(samples)} samples, min {min(samples) / mib:.1f} MiB)"
    )
    assert second <= 1.5 * first + 20 * mib, (
        f"sender memory grew: {first / mib:.1f} -> {second / mib:.1f} MiB"
    )
