"""Gentle, fast recovery: during an outage one request at a time probes the data plane, and delivery
resumes at full concurrency as soon as a probe is answered.

The real ``rudder-fast-sender`` (4 requests in flight, batches of 100 events) drains a spool of 2,000
events while the devserver answers 503, or has its port closed, for the first ``OUTAGE_S`` seconds.
Each batch retrying on its own schedule (as the sender did before the delivery gate) cost about 18
failed requests in such an outage; one probe at a time costs the four in flight when it began and
about one a second after that.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.delivery import assert_exactly_once, assert_spool_empty, iso_ms
from tests.support.devserver import DevServer
from tests.support.processes import closed_port, stop_process
from tests.support.producers import fill_spool
from tests.support.sender import Senders, sender_env
from tests.support.spool import read_status, status_json
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

OUTAGE_S = 6.0
CONCURRENCY = 4
# What the outage may cost: the requests in flight when it began, then probes at most 2 s apart, at
# least 0.25, 0.5 and then 1 s apart (equal jitter: never less than half the cap).
MAX_FAILED_REQUESTS = CONCURRENCY + 8
PROBE_CAP_S = 2.0
SLACK_S = 1.5  # the devserver's and the sender's clocks read on a busy 2-core machine


def tail(text: str, n: int = 3000) -> str:
    return text[-n:]


@pytest.mark.parametrize(
    "outage",
    [{"fail_status": 503, "fail_for": OUTAGE_S}, {"down_for": OUTAGE_S}],
    ids=["503", "port-closed"],
)
def test_an_outage_is_probed_one_request_at_a_time_and_delivery_resumes_at_once(
    outage: dict[str, Any], devserver: DevServer, senders: Senders, spool_dir: Path
) -> None:
    produced = fill_spool(spool_dir, 2, 1_000)
    devserver.control(outage)
    ends_at = time.time() + OUTAGE_S
    proc = senders.run(
        ["--drain", "--drain-timeout", "90", "--max-batch-events", "100", "--concurrency", str(CONCURRENCY)],
        sender_env(spool_dir, devserver.url),
        timeout=120,
    )
    assert proc.returncode == 0, tail(proc.stderr)
    received = devserver.received()
    assert_exactly_once(received, produced)
    assert_spool_empty(spool_dir)

    status = read_status(spool_dir)
    assert status is not None
    failed = status["counters"]["retried"]  # every attempt that failed (503 or refused) was retried
    first_after = min(iso_ms(event["receivedAt"]) for event in received) / 1000 - ends_at
    print(
        f"\n{failed} failed requests in a {OUTAGE_S:g} s outage; first delivery {first_after:.2f} s after it"
    )
    assert 1 <= failed <= MAX_FAILED_REQUESTS, tail(proc.stderr)
    assert first_after <= PROBE_CAP_S + SLACK_S, tail(proc.stderr)
    assert "backing off" in proc.stderr
    assert "recovered: delivering to" in proc.stderr
    if "fail_status" in outage:
        assert devserver.stats()["by_status"]["503"] == failed


def test_retries_show_during_the_outage_and_stay_counted_after_a_stop(
    tmp_path: Path, senders: Senders
) -> None:
    """The failed attempts are counted as they happen (the status and metrics counter used to stand
    still until the batch was delivered), and a stop during the outage keeps them in the ledger: the
    counter never goes back at the next start (Prometheus would read that as a reset)."""
    spool_dir = tmp_path / "spool"
    fill_spool(spool_dir, 1, 200)
    sender = senders.start([], sender_env(spool_dir, f"http://127.0.0.1:{closed_port()}"))
    doc = wait_for(lambda: (d := status_json(spool_dir))["counters"]["retried"] >= 2 and d, timeout=30)
    assert doc["sender"]["state"] == "backoff", doc["sender"]
    assert doc["counters"]["sent"] == 0, doc["counters"]
    during = doc["counters"]["retried"]
    assert stop_process(sender.proc) == 0, sender.stderr()
    after = status_json(spool_dir)  # the ledger's, with no sender running
    assert after["counters"]["retried"] >= during, (during, after["counters"])
