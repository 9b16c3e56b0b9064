"""``--drain-on-stop SECONDS`` (``RUDDER_FAST_DRAIN_ON_STOP``): a sender whose spool will not outlive it
(a pod's ``emptyDir``) keeps delivering after SIGTERM, and says by its exit code whether it finished.

Real sender, real devserver (slowed down, or failing), real signals. Without the option the same
SIGTERM leaves the backlog in the spool, which is right for a spool that outlives the sender and is
what the first test checks too, so that it fails if the option does nothing.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.support.delivery import assert_delivered_exactly
from tests.support.devserver import DevServer
from tests.support.producers import fill_spool
from tests.support.sender import RunningSender, Senders, sender_env, wait_sender_ready
from tests.support.spool import read_status, segment_files, status_json
from tests.support.waiting import wait_for

EVENTS = 6_000


def started(senders: Senders, spool: Path, dev: DevServer, *args: str, **env: str) -> RunningSender:
    """A sender that has begun delivering (or trying to)."""
    sender = senders.start(["--max-batch-events", "200", *args], sender_env(spool, dev.url, **env))
    wait_sender_ready(spool, sender)
    # Its own status (a previous sender's files are still there), so its signal handlers are in place.
    wait_for(lambda: (read_status(spool) or {}).get("pid") == sender.pid, timeout=30)
    return sender


def test_sigterm_with_drain_on_stop_delivers_the_backlog_then_exits_0(
    tmp_path: Path, devserver: DevServer, senders: Senders
) -> None:
    spool = tmp_path / "spool"
    produced = fill_spool(spool, 2, EVENTS // 2)
    devserver.control({"latency_ms": 40})  # ~30 requests of 200 events, 4 in flight: about a second

    # Without the option: SIGTERM stops at once and leaves the rest for the next start.
    plain = started(senders, spool, devserver)
    plain.proc.send_signal(signal.SIGTERM)
    assert plain.wait(30) == 0
    left = status_json(spool)["backlog"]["events"]
    assert left > 0, "the backlog was gone before the signal: the test proves nothing"

    sender = started(senders, spool, devserver, RUDDER_FAST_DRAIN_ON_STOP="60")
    sender.proc.send_signal(signal.SIGTERM)
    assert sender.wait(90) == 0, sender.stderr()
    assert "asked to stop: delivering what is pending for up to 60 s" in sender.stderr()
    assert "drain complete" in sender.stderr()
    assert_delivered_exactly(devserver.received(), produced.ids)
    assert segment_files(spool) == []
    doc = read_status(spool)
    assert doc is not None
    assert doc["state"] == "stopped"


def test_time_running_out_exits_4_and_keeps_the_rest_in_the_spool(
    tmp_path: Path, devserver: DevServer, senders: Senders
) -> None:
    spool = tmp_path / "spool"
    fill_spool(spool, 1, 500)
    devserver.control({"fail_status": 503})
    sender = started(senders, spool, devserver, "--drain-on-stop", "2")
    wait_for(lambda: status_json(spool).get("last_error"), timeout=30)
    t0 = time.monotonic()
    sender.proc.send_signal(signal.SIGTERM)
    assert sender.wait(60) == 4
    took = time.monotonic() - t0
    assert took >= 2.0, f"stopped after {took:.1f} s, before its --drain-on-stop time"
    assert "drain stopped after --drain-on-stop 2 s" in sender.stderr()
    assert status_json(spool)["backlog"]["events"] == 500
    assert devserver.received() == []


def test_a_second_signal_stops_at_once_with_exit_4(
    tmp_path: Path, devserver: DevServer, senders: Senders
) -> None:
    spool = tmp_path / "spool"
    fill_spool(spool, 1, 500)
    devserver.control({"fail_status": 503})
    sender = started(senders, spool, devserver, "--drain-on-stop", "600")
    sender.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "asked to stop" in sender.stderr(), timeout=10)
    sender.proc.send_signal(signal.SIGTERM)
    assert sender.wait(30) == 4
    assert status_json(spool)["backlog"]["events"] == 500
