"""The data plane misbehaving, switched at run time through the devserver's ``POST /_control``:
server errors, a closed port, a lowered size limit, a poisoned event, a wrong write key.

Each test checks what docs/wire.md asks of a well-behaved sender, on what crossed the wire.
"""

from __future__ import annotations

import base64
import collections
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.delivery import assert_exactly_once, assert_spool_empty, assert_valid_wire_event, iso_ms
from tests.support.devserver import DevServer
from tests.support.processes import tail
from tests.support.producers import fill_spool
from tests.support.sender import Senders, sender_env
from tests.support.spool import inspect_spool, read_rejected, read_status
from tests.support.waiting import wait_for

# Per-test timeout above the default: outages, then drains with 120 s deadlines.
pytestmark = pytest.mark.timeout(300)


def test_outage_503_then_connection_refused(devserver: DevServer, senders: Senders, spool_dir: Path) -> None:
    produced = fill_spool(spool_dir, 4, 2_500)
    produced_at_ms = max(after for _, after in produced.window_ms.values())

    # ~2 s of 503, then ~2 s with the port closed; the sender is already retrying when it starts.
    devserver.control({"fail_status": 503, "fail_for": 2.5})
    fail_started = time.monotonic()
    sender = senders.start(["--drain", "--drain-timeout", "60"], sender_env(spool_dir, devserver.url))
    wait_for(lambda: devserver.stats()["by_status"].get("503", 0) >= 1, timeout=20)
    assert devserver.stats()["events"] == 0
    wait_for(lambda: time.monotonic() >= fail_started + 2.0, timeout=5)
    devserver.control({"down_for": 2.0})  # the 503 window ends while the port is closed
    down_at_ms = time.time_ns() // 1_000_000
    wait_for(lambda: devserver.try_stats() is None, timeout=1.5)  # the port is closed

    code = sender.wait(timeout=90)
    assert code == 0, tail(sender.stderr())

    received = devserver.received()
    assert_exactly_once(received, produced)
    stats = devserver.stats()
    assert set(stats["by_status"]) == {"200", "503"}, stats
    assert stats["by_status"]["503"] >= 1
    for event in received:
        assert_valid_wire_event(event)
        before, after = produced.window_ms[event["messageId"]]
        original = iso_ms(event["originalTimestamp"])
        sent = iso_ms(event["sentAt"])
        # originalTimestamp is when track() was called, whatever the delay...
        assert before <= original <= after, (event, before, after)
        # ...and sentAt is when the accepted attempt was sent: after the outage, so at least ~2 s
        # later for every event (all were created before it), so the server's clock-skew correction
        # (receivedAt - (sentAt - originalTimestamp)) gives back the time of the call.
        assert sent >= down_at_ms + 1_500, (event, down_at_ms)
        assert sent - original >= 1_500, event
        assert original <= produced_at_ms
    status = read_status(spool_dir)
    assert status is not None, status
    assert status["counters"]["retried"] >= 1, status
    assert_spool_empty(spool_dir)


def test_lowered_size_limit_splits_batches(devserver: DevServer, senders: Senders, spool_dir: Path) -> None:
    max_body = 20_000
    produced = fill_spool(spool_dir, 2, 2_000)
    devserver.control({"max_body": max_body})
    proc = senders.run(
        ["--drain", "--drain-timeout", "90"], sender_env(spool_dir, devserver.url), timeout=120
    )
    assert proc.returncode == 0, tail(proc.stderr)

    stats = devserver.stats()
    print(f"size limit {max_body}: {stats}")
    assert set(stats["by_status"]) == {"200", "413"}, stats
    assert stats["by_status"]["413"] >= 1, stats
    assert stats["by_status"]["200"] >= 1, stats
    # Every accepted request fit the lowered limit: at ~200 bytes an event, no request holds more
    # than max_body / 100 events, so 4,000 events need many requests.
    assert stats["by_status"]["200"] >= 4_000 * 100 // max_body, stats
    received = devserver.received()
    assert_exactly_once(received, produced)
    for event in received:
        assert_valid_wire_event(event)
    assert read_rejected(spool_dir) == []
    assert_spool_empty(spool_dir)


def _poison_identity(producer: int, j: int) -> tuple[str | None, str | None]:
    if j % 100 == 37:
        return "poison", None
    return f"user-{producer}-{j}", None


def test_poisoned_events_are_quarantined_and_the_rest_delivered(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    produced = fill_spool(spool_dir, 2, 2_500, identity=_poison_identity)
    poisoned = {mid for mid, user in produced.user_of.items() if user == "poison"}
    assert len(poisoned) == 50
    devserver.control({"poison_user_id": "poison"})

    proc = senders.run(
        ["--drain", "--drain-timeout", "90"], sender_env(spool_dir, devserver.url), timeout=120
    )
    assert proc.returncode == 0, tail(proc.stderr)

    rejected = read_rejected(spool_dir)
    rejected_ids = collections.Counter(line["event"]["messageId"] for line in rejected)
    assert set(rejected_ids) == poisoned, (len(rejected_ids), len(poisoned))
    assert all(n == 1 for n in rejected_ids.values()), rejected_ids.most_common(3)
    for line in rejected:
        assert line["status"] == 400, line
        assert isinstance(line["response"], str), line
        assert line["response"], line
        assert line["event"]["userId"] == "poison", line

    received = devserver.received()
    counts = collections.Counter(e["messageId"] for e in received)
    assert set(counts) == produced.id_set - poisoned
    assert max(counts.values()) == 1
    assert len(received) == len(produced.ids) - len(poisoned)
    stats = devserver.stats()
    print(f"{len(poisoned)} poisoned events: {stats}")
    assert set(stats["by_status"]) == {"200", "400"}, stats
    status = read_status(spool_dir)
    assert status is not None, status
    assert status["counters"]["rejected"] == len(poisoned), status
    assert_spool_empty(spool_dir)


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {needle!r}" for needle in needles if needle in data]
    return found


def test_wrong_write_key_halts_keeps_everything_and_never_leaks_the_key(
    start_devserver: Callable[..., DevServer], senders: Senders, spool_dir: Path
) -> None:
    right, wrong = "right-key-0c6d1e", "wrong-key-7f3a9b25"
    devserver = start_devserver(write_keys=[right])
    produced = fill_spool(spool_dir, 2, 1_000)

    env = sender_env(spool_dir, devserver.url, write_key=None)
    started = time.monotonic()
    proc = senders.run(
        ["--write-key", wrong, "--drain", "--drain-timeout", "20", "--log-level", "DEBUG"], env, timeout=60
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 4, tail(proc.stderr)
    assert elapsed < 10, f"exit 4 only after {elapsed:.1f} s: the drain timeout, not the 401"
    assert "401" in proc.stderr or "write key" in proc.stderr, tail(proc.stderr)

    stats = devserver.stats()
    assert set(stats["by_status"]) == {"401"}, stats
    assert stats["events"] == 0, stats
    assert devserver.received() == []
    pending, _ = inspect_spool(spool_dir)
    assert {e["messageId"] for e in pending} == produced.id_set
    assert len(pending) == len(produced.ids)

    # The key is a secret: not in the logs, not in the status, ledger or any other spool file.
    token = base64.b64encode(f"{wrong}:".encode())
    secrets = [wrong.encode(), token]
    leaks = [s.decode() for s in secrets if s in proc.stderr.encode() or s in proc.stdout.encode()]
    assert not leaks, f"the write key is in the sender's output: {leaks}"
    assert _files_containing(spool_dir, secrets) == []

    proc = senders.run(["--write-key", right, "--drain", "--drain-timeout", "60"], env, timeout=90)
    assert proc.returncode == 0, tail(proc.stderr)
    assert_exactly_once(devserver.received(), produced)
    assert_spool_empty(spool_dir)


def _log_lines(text: str) -> collections.Counter[str]:
    """Log lines per level (the sender's format: ``... rudder-fast-sender[pid] LEVEL message``)."""
    levels: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        for level in ("DEBUG", "INFO", "WARNING", "ERROR"):
            if f"] {level} " in line:
                levels[level] += 1
    return levels


def test_a_data_plane_refusing_every_event_costs_a_few_log_lines_not_one_per_event(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    """Every request answered 400, then every event over the size limit (413): all 600 events end in
    rejected/, and the sender's log says so in a handful of lines (it used to write a WARNING per
    event, and an INFO per split)."""
    fill_spool(spool_dir, 2, 150)
    devserver.control({"fail_status": 400})
    proc = senders.run(
        ["--drain", "--drain-timeout", "90"], sender_env(spool_dir, devserver.url), timeout=120
    )
    assert proc.returncode == 0, tail(proc.stderr)
    fill_spool(spool_dir, 2, 150)
    devserver.control({"fail_status": None, "max_body": 200})
    proc2 = senders.run(
        ["--drain", "--drain-timeout", "90"], sender_env(spool_dir, devserver.url), timeout=120
    )
    assert proc2.returncode == 0, tail(proc2.stderr)
    assert len(read_rejected(spool_dir)) == 600
    for run in (proc, proc2):
        levels = _log_lines(run.stderr)
        print(f"\n{dict(levels)}\n{tail(run.stderr, 1500)}")
        assert levels["WARNING"] + levels["ERROR"] <= 6, run.stderr
        assert levels["INFO"] <= 10, run.stderr


def test_retry_after_from_the_data_plane_is_honoured(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    """A proxy in front of the gateway answers 503 with ``Retry-After: 3`` for 2.5 s: each batch in
    flight asks once and waits the 3 s (its own backoff would have asked again within 0.5 s)."""
    produced = fill_spool(spool_dir, 1, 400)
    devserver.control({"fail_status": 503, "fail_for": 2.5, "retry_after": "3"})
    started = time.monotonic()
    proc = senders.run(
        ["--drain", "--drain-timeout", "60", "--concurrency", "2", "--max-batch-events", "100"],
        sender_env(spool_dir, devserver.url),
        timeout=90,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, tail(proc.stderr)
    stats = devserver.stats()
    print(f"\n{stats['by_status']} in {took:.1f} s")
    assert stats["by_status"].get("503", 0) <= 2, stats  # one per batch in flight, then it waited
    assert took >= 2.9, took
    assert_exactly_once(devserver.received(), produced)


def test_refused_events_beyond_the_rejected_bound_are_counted_not_kept(
    devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    produced = fill_spool(spool_dir, 1, 1_000, identity=_poison_identity)
    poisoned = {mid for mid, user in produced.user_of.items() if user == "poison"}
    devserver.control({"poison_user_id": "poison"})
    env = sender_env(spool_dir, devserver.url)
    proc = senders.run(["--drain", "--drain-timeout", "60", "--rejected-max-bytes", "2K"], env, timeout=90)
    assert proc.returncode == 0, tail(proc.stderr)
    kept = read_rejected(spool_dir)
    assert 0 < len(kept) < len(poisoned) == 10
    assert sum(p.stat().st_size for p in (spool_dir / "rejected").glob("*.jsonl")) <= 2048
    status = read_status(spool_dir)
    assert status is not None
    counters = status["counters"]
    assert counters["rejected"] == len(poisoned), counters
    assert counters["dropped"].get("rejected_not_kept") == len(poisoned) - len(kept), counters
    assert len(devserver.received()) == len(produced.ids) - len(poisoned)
