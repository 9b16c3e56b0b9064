"""Torn writes: producers SIGKILLed mid-loop, then a drain. Nothing that returned is lost, nothing torn
is delivered.

20 producer processes (``rudder_fast.emit.track`` with the spool from RUDDER_FAST_SPOOL_DIR) write in
tight loops, events of varying sizes (mostly tiny, some 3 KB and 12 KB, which span pages so a kill can
land in the middle of the write). After each call returns, the producer appends the messageId to its
own report file with one ``write``. They are SIGKILLed at random moments staggered over ~1 s; then
``rudder-fast-sender --drain`` delivers the spool to the devserver. Checks:

- every messageId a producer reported is delivered (the report may lack the last call that returned
  just before the kill, so at most one event per producer is delivered without being reported);
- nothing is delivered that no producer emitted: every delivered id is ``<nonce>-<seq>`` of one
  producer's nonce, its payload is intact (length and CRC32 of the padding it carries), each producer's
  delivered events are exactly its calls 0..m with increasing seq, and nothing is delivered twice;
- the number delivered equals the complete event frames an independent reader finds in the segments,
  and ``rudder-fast status --json`` reports ``counters.skipped_bytes`` equal to the torn tail bytes
  that reader found (printed; often 0, since a kill rarely lands inside a write).
"""

from __future__ import annotations

import collections
import random
import signal
import time
import zlib
from pathlib import Path

import pytest

from tests.support.devserver import DevServer, OutTail
from tests.support.processes import REPO_ROOT, ProcGroup
from tests.support.producers import producer_env, read_id_report
from tests.support.programs import program_command
from tests.support.sender import Senders, drain
from tests.support.spool import scan_spool, segment_files, status_json
from tests.support.waiting import wait_for

# Per-test timeout above the default: the drain after the kills has a 150 s deadline.
pytestmark = pytest.mark.timeout(300)

PRODUCERS = 20
KILL_WINDOW_S = 1.0


def test_sigkill_mid_write_loses_nothing_returned_and_delivers_nothing_torn(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    print(f"\nseed {seed}")
    rng = random.Random(seed)
    reports = tmp_path / "reports"
    reports.mkdir()
    go = tmp_path / "go"
    env = producer_env(spool_dir)
    with ProcGroup(tmp_path) as procs:
        for k in range(PRODUCERS):
            procs.start(
                f"torn-{k}",
                program_command("torn", reports / f"{k}.ids", k, seed + k, go),
                env=env,
                cwd=REPO_ROOT,
            )

        def all_ready() -> bool:
            for k in range(PRODUCERS):
                proc = procs.procs[f"torn-{k}"]
                assert proc.poll() is None, f"producer {k} exited early:\n{procs.log(f'torn-{k}')}"
            return all((reports / f"{k}.ids.ready").exists() for k in range(PRODUCERS))

        wait_for(all_ready, timeout=60)
        go.touch()
        wait_for(lambda: all((reports / f"{k}.ids").stat().st_size for k in range(PRODUCERS)), timeout=30)
        start = time.monotonic()
        kill_at = sorted(rng.uniform(0.05, KILL_WINDOW_S) for _ in range(PRODUCERS))
        order = list(range(PRODUCERS))
        rng.shuffle(order)
        for k, at in zip(order, kill_at, strict=True):
            time.sleep(max(0.0, start + at - time.monotonic()))
            proc = procs.procs[f"torn-{k}"]
            assert proc.poll() is None, f"producer {k} died before its kill:\n{procs.log(f'torn-{k}')}"
            proc.send_signal(signal.SIGKILL)
        for k in range(PRODUCERS):
            code = procs.procs[f"torn-{k}"].wait(30)
            assert code == -signal.SIGKILL, (k, code, procs.log(f"torn-{k}"))

    reported: dict[int, list[str]] = {k: read_id_report(reports / f"{k}.ids") for k in range(PRODUCERS)}
    n_reported = sum(map(len, reported.values()))
    assert all(reported.values()), "a producer reported nothing"
    assert all(mid != "None" for ids in reported.values() for mid in ids), "a call returned None (dropped)"

    scans = scan_spool(spool_dir)
    corrupt = {s.name: s.corrupt for s in scans if s.corrupt}
    assert not corrupt, f"segments with damage other than a torn tail: {corrupt}"
    torn_bytes = sum(s.torn_bytes for s in scans)
    complete_events = sum(s.events for s in scans)
    torn_files = sum(1 for s in scans if s.torn_bytes)
    mib = sum(p.stat().st_size for p in segment_files(spool_dir)) / 2**20
    print(
        f"{n_reported} events reported by {PRODUCERS} producers; {len(scans)} segments, {mib:.0f} MiB, "
        f"{complete_events} complete event frames; torn tails: {torn_files} files, {torn_bytes} bytes"
    )

    t0 = time.monotonic()
    drain(senders, spool_dir, devserver, timeout=120)
    drained_in = time.monotonic() - t0
    out = OutTail(devserver.out_path)
    out.poll()

    # Nothing delivered twice, and exactly the complete frames.
    dups = {mid: n for mid, n in out.counts.items() if n > 1}
    assert not dups, f"{len(dups)} events delivered twice, e.g. {list(dups.items())[:5]}"
    assert out.total == complete_events, (out.total, complete_events)

    # Every reported event delivered.
    all_reported = {mid for ids in reported.values() for mid in ids}
    missing = all_reported - out.ids
    assert not missing, f"{len(missing)} events whose call returned were lost, e.g. {sorted(missing)[:5]}"

    # Every delivered event is one a producer made, intact.
    nonce_of: dict[int, str] = {}
    for k, ids in reported.items():
        nonces = {mid.rsplit("-", 1)[0] for mid in ids}
        assert len(nonces) == 1, (k, nonces)
        nonce_of[k] = nonces.pop()
    assert len(set(nonce_of.values())) == PRODUCERS, "two producers share a nonce"
    by_producer: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for mid, event in out.events.items():
        user = event.get("userId", "")
        assert user.startswith("torn-"), event
        k = int(user[len("torn-") :])
        nonce, seq = mid.rsplit("-", 1)
        assert nonce == nonce_of[k], (mid, k, nonce_of[k])
        props = event["properties"]
        pad = props["pad"]
        assert len(pad) == props["len"], f"payload damaged: {mid}"
        assert zlib.crc32(pad.encode()) == props["crc"], f"payload damaged: {mid}"
        assert event["event"] == "Torn", event
        by_producer[k].append((props["i"], int(seq)))
    unreported = 0
    for k in range(PRODUCERS):
        calls = sorted(by_producer[k])
        indexes = [i for i, _ in calls]
        assert indexes == list(range(len(calls))), f"producer {k}: delivered calls are not 0..m"
        seqs = [s for _, s in calls]
        assert seqs == sorted(set(seqs)), f"producer {k}: seq does not increase with the calls"
        extra = len(calls) - len(reported[k])
        assert 0 <= extra <= 1, f"producer {k}: {extra} events delivered beyond its report"
        unreported += extra

    status = status_json(spool_dir)
    skipped = status["counters"]["skipped_bytes"]
    print(
        f"drained {out.total} events in {drained_in:.1f} s ({unreported} returned-but-unreported); "
        f"status counters.skipped_bytes = {skipped} (torn tail bytes found: {torn_bytes})"
    )
    assert skipped == torn_bytes, (skipped, torn_bytes)
    assert status["backlog"]["events"] == 0, status
    assert segment_files(spool_dir) == []
    # Passed: free the ~200 MB the devserver wrote (pytest keeps the last runs' temporary directories).
    devserver.out_path.unlink()
