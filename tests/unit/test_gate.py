"""The delivery gate (``rudder_fast.gate``): where each attempt goes, how many at once, and when, through
outages and failovers. Pure: the clock is a number and the randomness is seeded; no thread, no sleep.

A small discrete-event model of the sender's workers (each holds a batch and asks the gate before every
attempt) measures what an outage costs the data plane and how soon delivery resumes after it."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rudder_fast import gate
from rudder_fast.gate import Gate, Permit
from rudder_fast.retry import RetryPolicy

POLICY = RetryPolicy()


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def make(endpoints: int = 1, concurrency: int = 4, rnd: float = 1.0) -> Gate:
    return Gate(endpoints=endpoints, concurrency=concurrency, policy=POLICY, rng=FixedRandom(rnd))


def permit(g: Gate, now: float) -> Permit:
    got = g.acquire(now)
    assert isinstance(got, Permit), f"no permit at {now}: wait {got}"
    return got


def test_while_healthy_up_to_concurrency_attempts_go_to_the_first_data_plane() -> None:
    g = make(endpoints=2, concurrency=3)
    held = [permit(g, 0.0) for _ in range(3)]
    assert [p.endpoint for p in held] == [0, 0, 0]
    assert not any(p.probe for p in held)
    assert g.acquire(0.0) == math.inf  # the fourth waits for one of them
    g.answered(held[0], 0.1)
    assert permit(g, 0.1).endpoint == 0
    assert g.state() == gate.OK


def test_the_state_is_starting_until_the_first_answer() -> None:
    g = make()
    p = permit(g, 0.0)
    assert g.state() == gate.STARTING
    g.answered(p, 0.05)
    assert g.state() == gate.OK


def test_an_outage_lets_one_probe_at_a_time_and_only_when_its_wait_is_over() -> None:
    g = make(concurrency=4, rnd=1.0)
    held = [permit(g, 0.0) for _ in range(4)]
    g.failed(held[0], 1.0)
    assert g.state() == gate.BACKOFF
    first = g.endpoints[0].retry_at
    assert first == pytest.approx(1.5)  # the first wait: up to 0.5 s
    for p in held[1:]:  # in flight when the outage began: no news, the schedule stays
        g.failed(p, 1.1)
    assert g.endpoints[0].failures == 1
    assert g.endpoints[0].retry_at == first
    assert g.acquire(1.2) == pytest.approx(0.3)
    probe = permit(g, 1.5)
    assert probe.probe
    assert g.acquire(1.6) == math.inf  # no second probe while one is in flight
    g.failed(probe, 1.7)
    assert g.endpoints[0].failures == 2
    assert g.endpoints[0].retry_at == pytest.approx(2.7)  # then up to 1 s


def test_a_probe_answered_lets_every_waiting_worker_go_at_once() -> None:
    g = make(concurrency=4)
    p = permit(g, 0.0)
    g.failed(p, 0.0)
    probe = permit(g, 10.0)
    g.answered(probe, 10.1)
    assert g.state() == gate.OK
    resumed = [permit(g, 10.1) for _ in range(4)]
    assert not any(p.probe for p in resumed)


def test_retry_after_and_fixed_waits_are_floors() -> None:
    g = make(rnd=1.0)
    g.failed(permit(g, 0.0), 0.0, floor=20.0)
    assert g.endpoints[0].retry_at == 20.0
    assert g.acquire(19.9) == pytest.approx(0.1)
    g.failed(permit(g, 20.0), 20.0, state=gate.HALTED, floor=60.0)
    assert g.state() == gate.HALTED
    assert g.endpoints[0].retry_at == 80.0


def test_a_retry_after_on_an_attempt_already_in_flight_still_counts() -> None:
    g = make(concurrency=2, rnd=0.0)
    a, b = permit(g, 0.0), permit(g, 0.0)
    g.failed(a, 1.0)
    g.failed(b, 1.0, floor=30.0)
    assert g.endpoints[0].retry_at == 31.0
    assert g.endpoints[0].failures == 1


def test_a_failing_data_plane_hands_its_traffic_to_the_next_at_once() -> None:
    g = make(endpoints=3, concurrency=2)
    a = permit(g, 0.0)
    g.failed(a, 1.0)
    moved = permit(g, 1.0)
    assert (moved.endpoint, moved.probe) == (1, False)
    assert g.in_use() is g.endpoints[1]
    g.answered(moved, 1.1)
    assert g.state() == gate.OK
    assert [e.state for e in g.endpoints] == [gate.BACKOFF, gate.OK, gate.STANDBY]


def test_the_first_data_plane_is_probed_while_a_later_one_carries_the_traffic_and_takes_it_back() -> None:
    g = make(endpoints=2, concurrency=2, rnd=1.0)
    g.failed(permit(g, 0.0), 0.0)
    g.answered(permit(g, 0.0), 0.1)
    assert permit(g, 0.2).endpoint == 1  # not yet: the first's wait is not over
    probe = permit(g, 0.5)
    assert (probe.endpoint, probe.probe) == (0, True)
    g.failed(probe, 0.6)
    probe = permit(g, 1.6)
    assert (probe.endpoint, probe.probe) == (0, True)
    g.answered(probe, 1.7)
    assert g.in_use() is g.endpoints[0]
    assert permit(g, 1.7).endpoint == 0


def test_with_every_data_plane_down_one_probe_goes_to_the_first_whose_wait_is_over() -> None:
    g = make(endpoints=2, concurrency=4, rnd=1.0)
    g.failed(permit(g, 0.0), 0.0)  # the first: retry at 0.5
    g.failed(permit(g, 0.2), 0.2, floor=5.0)  # the second: retry at 5.2
    assert g.in_use() is None
    assert g.state() == gate.BACKOFF
    probe = permit(g, 0.5)
    assert (probe.endpoint, probe.probe) == (0, True)
    g.failed(probe, 0.6)  # the first: retry at 1.6
    assert g.acquire(0.7) == pytest.approx(0.9)
    assert permit(g, 1.6).endpoint == 0


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ((gate.HALTED,), gate.HALTED),
        ((gate.DISABLED,), gate.DISABLED),
        ((gate.HALTED, gate.DISABLED), gate.HALTED),
        ((gate.HALTED, gate.BACKOFF), gate.BACKOFF),
        ((gate.BACKOFF, gate.BACKOFF), gate.BACKOFF),
    ],
)
def test_the_state_with_every_data_plane_down(states: tuple[str, ...], expected: str) -> None:
    g = make(endpoints=len(states), concurrency=len(states))
    for state in states:
        g.failed(permit(g, 0.0), 0.0, state=state)
    assert g.state() == expected


def test_the_oldest_attempt_in_flight() -> None:
    g = make()
    assert g.oldest_started() is None
    a = permit(g, 1.0)
    permit(g, 2.0)
    assert g.oldest_started() == 1.0
    g.release(a)
    assert g.oldest_started() == 2.0


def test_a_failure_state_is_required_and_a_gate_needs_a_data_plane() -> None:
    g = make()
    with pytest.raises(ValueError, match="not a failure state"):
        g.failed(permit(g, 0.0), 0.0, state=gate.OK)
    with pytest.raises(ValueError, match="at least one"):
        make(endpoints=0)


# -- the invariants, under any sequence of events ---------------------------------------------------------

Step = tuple[str, int, int]  # (what, which permit or endpoint, a small number)


@settings(max_examples=300, deadline=None)
@given(
    endpoints=st.integers(1, 3),
    concurrency=st.integers(1, 4),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["acquire", "answer", "fail", "halt", "wait"]),
            st.integers(0, 7),
            st.integers(0, 60),
        ),
        max_size=60,
    ),
    seed=st.integers(0, 1000),
)
def test_invariants(endpoints: int, concurrency: int, steps: list[Step], seed: int) -> None:
    """At most one probe in flight; normal attempts only to the data plane in use and never more than
    ``concurrency``; while every data plane is down, nothing but probes; no probe before its wait."""
    g = Gate(endpoints=endpoints, concurrency=concurrency, policy=POLICY, rng=random.Random(seed))
    now = 0.0
    held: list[Permit] = []
    for what, index, amount in steps:
        if what == "wait":
            now += amount / 10
        elif what == "acquire":
            in_use = g.in_use()
            got = g.acquire(now)
            if isinstance(got, Permit):
                target = g.endpoints[got.endpoint]
                if got.probe:
                    assert not target.up
                    assert target.retry_at <= now
                else:
                    assert in_use is target
                held.append(got)
            else:
                assert got > 0
        elif held:
            p = held.pop(index % len(held))
            if what == "answer":
                g.answered(p, now)
            else:
                g.failed(p, now, state=gate.HALTED if what == "halt" else gate.BACKOFF, floor=amount / 10)
        probes = [p for p in g.inflight.values() if p.probe]
        assert len(probes) <= 1
        assert sum(not p.probe for p in g.inflight.values()) <= concurrency
        assert set(g.inflight.values()) == set(held)


# -- what an outage costs, in a model of the sender's workers ---------------------------------------------


@dataclass
class Outage:
    """A data plane that fails every attempt started in [start, end) and answers the others; each attempt
    takes ``rtt`` seconds. ``workers`` each hold a batch and try again as soon as the gate allows."""

    start: float = 5.0
    end: float = 15.0
    rtt: float = 0.01
    workers: int = 4

    def run(self, seed: int) -> tuple[int, float]:
        """(attempts started during the outage, delay from its end to the first attempt answered)."""
        g = Gate(endpoints=1, concurrency=self.workers, policy=POLICY, rng=random.Random(seed))
        events: list[tuple[float, int, str, Permit | None]] = [
            (0.0, w, "ask", None) for w in range(self.workers)
        ]
        heapq.heapify(events)
        during, first_after = 0, math.inf
        while events:
            now, worker, what, held = heapq.heappop(events)
            if now > self.end + 60:
                break
            if what == "ask":
                got = g.acquire(now)
                if isinstance(got, Permit):
                    during += self.start <= now < self.end
                    heapq.heappush(events, (now + self.rtt, worker, "done", got))
                elif got != math.inf:
                    heapq.heappush(events, (now + got, worker, "ask", None))
                else:  # woken when an attempt ends: modelled as asking again then
                    heapq.heappush(events, (now + self.rtt, worker, "ask", None))
                continue
            assert held is not None
            if self.start <= held.started < self.end:
                g.failed(held, now)
            else:
                g.answered(held, now)
                if held.started >= self.end:
                    first_after = min(first_after, now - self.end)
            heapq.heappush(events, (now, worker, "ask", None))
        return during, first_after


@pytest.mark.parametrize("seed", range(20))
def test_a_ten_second_outage_costs_a_handful_of_attempts_and_delivery_resumes_within_two_seconds(
    seed: int,
) -> None:
    during, resumed_after = Outage().run(seed)
    assert during <= 14, during  # four workers, each retrying on its own schedule, made 23-26
    assert resumed_after <= 2.0 + 2 * Outage.rtt, resumed_after
