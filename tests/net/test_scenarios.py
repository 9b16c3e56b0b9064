"""The sender through real network faults: every event delivered, and no request waiting past its timeouts.

Each scenario runs the product as a black box (see :mod:`tests.net.scenario`): events flow, one fault
comes and goes, the producer stops, and the test waits until the data plane holds every messageId. The
one-line result of each is printed (``-s``), kept in the test's tmp dir and listed in the summary.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.net.netns import Topology
from tests.net.scenario import (
    FAULT_S,
    SCENARIOS,
    NetRun,
    ScenarioResult,
    Timeouts,
)
from tests.support.processes import clean_env, console_script
from tests.support.waiting import wait_for

pytestmark = pytest.mark.net

SLACK_S = 1.0  # scheduling on a busy 2-core machine, and the relay's own view of when a request ended


def felt(result: ScenarioResult, run: NetRun) -> None:
    """The fault reached the sender: it had to retry, and its status said so while it lasted."""
    assert result.retried > 0, result.line()
    assert {"backoff", "stalled"} & set(result.states), f"status never left ok: {result.line()}"
    assert result.states[-1] == "ok", result.line()


def duplicated(result: ScenarioResult, run: NetRun) -> None:
    """The data plane stored a batch whose answer the sender never got, so it sent it again."""
    felt(result, run)
    assert result.duplicates > 0, result.line()


def lossy(result: ScenarioResult, run: NetRun) -> None:
    dropped = run.topo.relay_control()["dropped"]
    assert dropped["a_to_b"] + dropped["b_to_a"] > 0  # packets were lost


def held(result: ScenarioResult, run: NetRun) -> None:
    """A request was held until the sender gave up on it."""
    felt(result, run)
    assert result.longest_request_s >= run.timeouts.read_s - 0.1, result.line()


def via_dns(result: ScenarioResult, run: NetRun) -> None:
    felt(result, run)
    assert run.dns()["count"] > 0  # the name went to the nameserver, which failed it


CHECKS: dict[str, Callable[[ScenarioResult, NetRun], None]] = {
    "blackhole mid-request": duplicated,
    "blackhole between requests": felt,
    "200 ms RTT, 1% loss": lossy,
    "reset mid-response": duplicated,
    "accept, never answer": held,
    "trickle 1 byte/s": held,
    "DNS fails to resolve": via_dns,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_event_is_delivered_through(
    name: str, topology: Topology, tmp_path: Path, record_result: list[ScenarioResult]
) -> None:
    scenario = SCENARIOS[name]
    net_run = scenario.start(topology, tmp_path)
    result = net_run.run(name, scenario.inject)
    record_result.append(result)
    print(result.line())
    assert result.lost == 0, result.line()
    limit = net_run.timeouts.connect_s + net_run.timeouts.read_s + SLACK_S
    assert result.longest_request_s <= limit, f"a request hung past its timeouts: {result.line()}"
    CHECKS[name](result, net_run)


def test_status_does_not_say_ok_while_requests_go_unanswered(
    topology: Topology, tmp_path: Path, record_result: list[ScenarioResult]
) -> None:
    run = NetRun(topology, tmp_path, timeouts=Timeouts(connect_s=1.0, read_s=10.0)).start()
    run.wait_flowing()
    start = time.time()
    run.tcp(mode="never")

    def unanswered_for(seconds: float) -> bool:
        exchanges = run.tcp(since=0)["exchanges"]
        held = [ex for ex in exchanges if ex["t_request"] >= start and ex["t_end"] is None]
        return any(time.time() - ex["t_request"] >= seconds for ex in held)

    wait_for(lambda: unanswered_for(4.0), timeout=15)
    state = run.status()["sender"]["state"]
    assert state != "ok", "status says ok while requests have had no answer for 4 s"
    doctor = subprocess.run(
        [console_script("rudder-fast"), "doctor", "--spool-dir", str(run.spool)],
        capture_output=True, text=True, timeout=60, env=clean_env(), check=False,
    )  # fmt: skip
    sender_line = next((line for line in doctor.stdout.splitlines() if line[6:].startswith("sender")), "")
    assert "a request has waited" in sender_line, doctor.stdout
    run.tcp(mode="pass")
    result = run.run("status while unanswered", lambda r: (start, time.time()))
    record_result.append(result)
    assert result.lost == 0


def test_a_silent_nameserver_does_not_hold_a_request_past_the_connect_timeout(
    topology: Topology, tmp_path: Path, record_result: list[ScenarioResult]
) -> None:
    run = NetRun(topology, tmp_path, dns_mode="silent").start()
    run.wait_flowing()
    topology.set_resolv_conf("nameserver 127.0.0.1\n")  # the resolver's defaults, as on most hosts
    topology.set_hosts(resolvable=False)
    start = time.time()
    run.tcp(drop_all=True)  # every new attempt needs the name
    first_query = wait_for(lambda: run.dns(since=0)["queries"], timeout=10)[0]["t"]
    limit = run.timeouts.connect_s + SLACK_S

    def failed() -> bool:
        doc = run.status()
        at, error = doc["last_error_at"], doc["last_error"] or ""
        return at is not None and at >= first_query and "resolve" in error

    try:
        wait_for(failed, timeout=limit, interval=0.2)
    except AssertionError:
        raise AssertionError(
            f"the sender's attempt still had no outcome {limit:g} s after it asked for the name "
            f"(status: {run.status()['sender']['state']})"
        ) from None
    time.sleep(max(0.0, start + FAULT_S - time.time()))
    topology.set_hosts(resolvable=True)
    result = run.run("silent nameserver", lambda r: (start, time.time()))
    record_result.append(result)
    assert result.lost == 0


def test_a_blackholed_data_plane_fails_over_to_the_next_and_back(
    topology: Topology, tmp_path: Path, record_result: list[ScenarioResult]
) -> None:
    """Every packet to the first data plane dropped: its requests get no answer by their deadline, the
    traffic moves to the second (on the app side, out of the blackhole's reach), and comes back to the
    first once the blackhole is lifted."""
    run = NetRun(topology, tmp_path, backup=True).start()
    moved_within = run.timeouts.connect_s + run.timeouts.read_s + SLACK_S + 1.0

    def blackhole_then_back(r: NetRun) -> tuple[float, float]:
        assert r.in_use() == r.url
        r.topo.relay_control(blackhole=True)
        start = time.time()
        wait_for(lambda: r.in_use() == r.backup_url, timeout=moved_within, interval=0.1)
        time.sleep(max(0.0, start + FAULT_S - time.time()))  # the fault's own length
        r.topo.relay_control(blackhole=False)
        end = time.time()
        wait_for(lambda: r.in_use() == r.url, timeout=15, interval=0.1)  # probed with the next batches
        return start, end

    result = run.run("blackhole, failover", blackhole_then_back)
    record_result.append(result)
    print(result.line())
    assert result.lost == 0, result.line()
    assert result.longest_stall_s <= moved_within, result.line()
