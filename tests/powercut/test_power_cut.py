"""What a power cut costs the spool, measured black-box through the console scripts.

The spool lives on the power-cut file system. Producer processes (``Emitter.track``) write steadily
while ``rudder-fast-sender`` delivers to ``rudder-fast devserver``; in the ``outage`` scenario the data
plane answers 503 for the last seconds, so a backlog builds up in the spool. At a random moment the
power goes: every producer and the sender are stopped (SIGSTOP, so that nothing runs past the instant),
the file system is frozen (nothing more becomes durable), and they are SIGKILLed. Then the "reboot":
the durable state is written into a fresh directory and a new sender delivers it with ``--drain``.

    lost       = accepted by producers (the messageIds their calls returned)
                 - delivered before the cut - delivered after the reboot
    duplicates = deliveries of a messageId already delivered

Each case is run with ``--fsync-interval 0`` (the sender syncs no segment) and ``--fsync-interval 1``
(the default). Every case prints its figures.

A last test cuts the power after the sender delivered and deleted segments it had synced: the
deletions must be durable before the ledger that forgets them, or the segments come back after the
cut with no ledger entry, and every event in them is sent again.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rudder_fast import ledger
from rudder_fast.layout import ensure_spool
from tests.powercut.mount import REPO, PowerCutFS
from tests.support.devserver import DevServer
from tests.support.producers import ProducerChild
from tests.support.sender import RunningSender, Senders, sender_env
from tests.support.spool import read_rejected, read_status
from tests.support.waiting import wait_for

PRODUCERS = 3
RATE_PER_PRODUCER = 800  # events/s: about a fifth of what the FUSE mount takes on two cores
SEGMENT_MAX_BYTES = 128 * 1024  # producers start a new segment about twice a second
STEADY_CUT_S = (1.5, 3.0)  # the cut falls at a random moment in this window after producers start
OUTAGE_FROM_S = 1.0  # the data plane answers 503 from this moment...
OUTAGE_CUT_S = (2.5, 3.5)  # ...until after the cut
# With --fsync-interval S, an event accepted more than S + this before the cut must survive it: the
# sender finds new segments within 0.05 s and its fsync pass takes a moment on a loaded machine.
FSYNC_SLACK_S = 1.0
DRAIN_TIMEOUT_S = 60.0


@dataclass
class Outcome:
    accepted: dict[str, int]  # messageId -> when its call returned (CLOCK_MONOTONIC ns)
    dropped: int  # calls that returned None
    delivered_before: list[str]
    delivered_after: list[str]
    cut_ns: int
    unreported: set[str]  # delivered, accepted by a producer killed before it could log the id

    @property
    def lost(self) -> set[str]:
        return set(self.accepted) - set(self.delivered_before) - set(self.delivered_after)

    @property
    def duplicates(self) -> int:
        delivered = self.delivered_before + self.delivered_after
        return len(delivered) - len(set(delivered))

    def oldest_lost_age_s(self) -> float:
        """How long before the cut the oldest lost event was accepted (0 if none was lost)."""
        lost = self.lost
        return max(((self.cut_ns - self.accepted[m]) / 1e9 for m in lost), default=0.0)


def read_producer_logs(logs: list[Path]) -> tuple[dict[str, int], int, dict[str, int]]:
    """(accepted messageId -> time, dropped count, producer nonce -> highest logged seq)."""
    accepted: dict[str, int] = {}
    last_seq: dict[str, int] = {}
    dropped = 0
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_bytes().decode().splitlines():
            mid, _, when = line.partition(" ")
            if not when:
                continue  # a line cut by the kill (a single write makes this all but impossible)
            if mid == "-":
                dropped += 1
                continue
            accepted[mid] = int(when)
            nonce, _, seq = mid.rpartition("-")
            last_seq[nonce] = max(last_seq.get(nonce, -1), int(seq))
    return accepted, dropped, last_seq


def delivered_ids(server: DevServer) -> list[str]:
    return [str(event["messageId"]) for event in server.received()]


@contextlib.contextmanager
def running_producers(spool: Path, logs: list[Path]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Producer processes (tests/powercut/producer.py), killed and reaped at the end in any case."""
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        for i, log in enumerate(logs):
            cmd = [sys.executable, "-m", "tests.powercut.producer", "--spool", str(spool), "--log", str(log),
                   "--index", str(i), "--rate", str(RATE_PER_PRODUCER),
                   "--segment-max-bytes", str(SEGMENT_MAX_BYTES)]  # fmt: skip
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def wait_until_running(sender: RunningSender, spool: Path) -> None:
    def up() -> bool:
        if sender.proc.poll() is not None:
            raise AssertionError(f"the sender exited ({sender.proc.returncode}):\n{sender.stderr()[-3000:]}")
        return read_status(spool) is not None

    wait_for(up, timeout=30)


def power_cut(fs: PowerCutFS, pids: list[int]) -> int:
    """Stop every process at one instant, freeze the file system, kill them all. The instant, in ns."""
    cut_ns = time.monotonic_ns()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    fs.freeze()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return cut_ns


@pytest.mark.parametrize("interval", ["0", "1"], ids=["fsync-off", "fsync-1s"])
@pytest.mark.parametrize("scenario", ["steady", "outage"])
def test_power_cut_loses_only_what_was_not_yet_synced(
    scenario: str,
    interval: str,
    powercut_fs: PowerCutFS,
    start_devserver: Callable[..., DevServer],
    senders: Senders,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    option = ["--fsync-interval", interval]
    rng = random.Random()
    spool = powercut_fs.mountpoint / "spool"
    ensure_spool(spool)
    powercut_fs.sync()  # the spool's directories were made long before the cut
    server = start_devserver()
    sender = senders.start(option, sender_env(spool, server.url))
    wait_until_running(sender, spool)

    logs = [tmp_path / f"producer-{i}.log" for i in range(PRODUCERS)]
    with running_producers(spool, logs) as producers:
        started = time.monotonic()
        wait_for(lambda: server.received(), timeout=30)  # delivery works
        if scenario == "outage":
            time.sleep(max(0.0, started + OUTAGE_FROM_S - time.monotonic()))
            server.control({"fail_status": 503, "fail_for": 3600})
            cut_at = started + rng.uniform(*OUTAGE_CUT_S)
        else:
            cut_at = started + rng.uniform(*STEADY_CUT_S)
        time.sleep(max(0.0, cut_at - time.monotonic()))  # the moment of the cut, chosen at random
        for proc in producers:
            assert proc.poll() is None, f"producer {proc.pid} exited early ({proc.returncode})"
        cut_ns = power_cut(powercut_fs, [p.pid for p in producers] + [sender.pid])
    sender.proc.wait()
    delivered_before = delivered_ids(server)
    fs_stats = powercut_fs.stats()

    rebooted = tmp_path / "rebooted"
    powercut_fs.write_durable(rebooted)
    powercut_fs.stop()
    server.control({"fail_status": None})
    drain = senders.run(
        ["--drain", "--drain-timeout", str(DRAIN_TIMEOUT_S), *option],
        sender_env(rebooted / "spool", server.url),
        timeout=DRAIN_TIMEOUT_S + 30,
    )
    (tmp_path / "drain.log").write_text(drain.stderr)
    assert drain.returncode == 0, drain.stderr[-3000:]
    delivered_all = delivered_ids(server)

    accepted, dropped, last_seq = read_producer_logs(logs)
    unreported = set(delivered_all) - set(accepted)
    outcome = Outcome(
        accepted, dropped, delivered_before, delivered_all[len(delivered_before) :], cut_ns, unreported
    )
    lost = outcome.lost
    with capsys.disabled():
        print(
            f"\npower cut, {scenario}, --fsync-interval {interval}: cut {cut_ns / 1e9 - started:.2f} s in; "
            f"accepted {len(accepted):,}; delivered {len(delivered_before):,} before the cut, "
            f"{len(outcome.delivered_after):,} after the reboot; lost {len(lost):,} "
            f"({100 * len(lost) / max(1, len(accepted)):.1f} %), accepted at most "
            f"{outcome.oldest_lost_age_s():.2f} s before the cut; duplicates {outcome.duplicates:,}; "
            f"fsyncs on the mount: {fs_stats['file_syncs']} files, {fs_stats['dir_syncs']} directories"
        )

    assert accepted, "the producers accepted nothing"
    assert dropped == 0, f"{dropped} events dropped by the producers before the cut"
    assert not read_rejected(rebooted / "spool"), "events rejected by the data plane"
    # A delivered event no producer logged must be the one a producer had just written when it was
    # stopped: the next seq of that producer. Anything else came from nowhere.
    for mid in unreported:
        nonce, _, seq = mid.rpartition("-")
        assert int(seq) == last_seq.get(nonce, -1) + 1, f"delivered but never accepted: {mid}"
    if interval == "0" and scenario == "outage":
        # The backlog was only ever in the page cache: the cut must take it (else the file system
        # kept what was never synced).
        assert lost, "nothing lost though nothing was synced"
    if interval != "0":
        assert fs_stats["file_syncs"] > 0, "the sender synced no segment"
        bound = float(interval) + FSYNC_SLACK_S
        assert outcome.oldest_lost_age_s() <= bound, (
            f"{len(lost)} events lost, the oldest accepted {outcome.oldest_lost_age_s():.2f} s before "
            f"the cut: more than --fsync-interval {interval} allows"
        )


def test_segments_deleted_after_delivery_stay_deleted_after_a_power_cut(
    powercut_fs: PowerCutFS,
    start_devserver: Callable[..., DevServer],
    senders: Senders,
    tmp_path: Path,
) -> None:
    """A producer writes for longer than the fsync interval (so the sender syncs its segment), then
    closes it; the sender delivers everything, deletes the segment and commits a ledger without it.
    Then the power goes. After the reboot a sender must find nothing to send."""
    spool = powercut_fs.mountpoint / "spool"
    ensure_spool(spool)
    powercut_fs.sync()
    server = start_devserver()
    sender = senders.start(["--fsync-interval", "0.2"], sender_env(spool, server.url))
    wait_until_running(sender, spool)
    producer = ProducerChild(spool)
    try:
        ids = producer.emit("first", 300)
        wait_for(lambda: powercut_fs.stats()["file_syncs"] > 0 and len(server.received()) >= 300, timeout=30)
        ids += producer.emit("second", 300)
        producer.call("close")  # sealed: the sender deletes the segment once everything is delivered
    finally:
        producer.stop()
    wait_for(lambda: len(server.received()) >= 600, timeout=30)

    def settled() -> bool:
        status = read_status(spool)
        return (
            not list((spool / "segments").iterdir())
            and status is not None
            and status["counters"]["sent"] >= 600
        )

    wait_for(settled, timeout=30)
    # The ledger is committed within moments of the deletion (every turn that changed the book).
    wait_for(lambda: ledger_offsets(spool) == {}, timeout=30)
    power_cut(powercut_fs, [sender.pid])
    sender.proc.wait()
    rebooted = tmp_path / "rebooted"
    powercut_fs.write_durable(rebooted)
    powercut_fs.stop()

    back = list((rebooted / "spool" / "segments").iterdir())
    drain = senders.run(
        ["--drain", "--drain-timeout", "30"], sender_env(rebooted / "spool", server.url), timeout=60
    )
    assert drain.returncode == 0, drain.stderr[-3000:]
    received = [str(event["messageId"]) for event in server.received()]
    assert sorted(received) == sorted(mid for mid in ids if mid is not None), (
        "events sent twice after the cut"
    )
    assert back == [], f"deleted segments came back after the cut: {back}"


def ledger_offsets(spool: Path) -> dict[str, int] | None:
    """The segments the committed ledger still records (None: no ledger yet)."""
    state = ledger.read(spool / "ledger")
    return None if state is None else dict(state.offsets)
