"""The retry policy, with a fake random source and an injected clock: no sleeping."""

from __future__ import annotations

import email.utils

import pytest

from rudder_fast.retry import Action, Decision, ErrorKind, RetryPolicy, parse_retry_after


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


POLICY = RetryPolicy(
    base=0.5, short_cap=2.0, cap_fraction=0.1, cap=30.0, halt_retry=60.0, disabled_retry=120.0
)


def decide(status: int | None, size: int = 10, **kw: object) -> Decision:
    return POLICY.decide(status, batch_size=size, **kw)  # type: ignore[arg-type]


def test_2xx_is_an_ack() -> None:
    assert decide(200).action is Action.ACK


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, None])
def test_transient_failures_are_retried_without_a_wait_of_their_own(status: int | None) -> None:
    """The wait is the delivery gate's: a decision only sets a floor (a Retry-After, a slow retry)."""
    decision = decide(status)
    assert decision.action is Action.RETRY
    assert decision.delay == 0.0


def test_probes_wait_longer_after_each_failure_up_to_a_short_cap_while_the_outage_is_young() -> None:
    ceilings = [POLICY.probe_delay(n, down_for=5.0, rng=FixedRandom(1.0)) for n in range(1, 8)]
    assert ceilings == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def test_the_cap_grows_with_the_outage_to_a_tenth_of_it_then_stops() -> None:
    def ceiling(down_for: float) -> float:
        return POLICY.probe_delay(50, down_for=down_for, rng=FixedRandom(1.0))

    assert ceiling(0.0) == 2.0
    assert ceiling(20.0) == 2.0
    assert ceiling(60.0) == pytest.approx(6.0)
    assert ceiling(250.0) == pytest.approx(25.0)
    assert ceiling(3600.0) == 30.0


def test_equal_jitter_waits_half_the_ceiling_at_least() -> None:
    assert POLICY.probe_delay(3, down_for=1.0, rng=FixedRandom(0.0)) == 1.0
    assert POLICY.probe_delay(3, down_for=1.0, rng=FixedRandom(0.5)) == pytest.approx(1.5)
    assert POLICY.probe_delay(3, down_for=1.0, rng=FixedRandom(0.999)) == pytest.approx(1.999)


def test_huge_failure_counts_do_not_overflow() -> None:
    assert POLICY.probe_delay(10_000, down_for=1e9, rng=FixedRandom(1.0)) == 30.0


def test_retry_after_is_the_floor_and_is_bounded() -> None:
    assert decide(429, retry_after=7.0).delay == 7.0
    assert decide(503, retry_after=-3.0).delay == 0.0
    assert decide(429, retry_after=10_000.0).delay == POLICY.retry_after_max


def test_a_refused_certificate_is_retried_slowly_and_said_as_it_is() -> None:
    said = "TLS certificate verify failed: the data plane's TLS certificate has expired"
    tls = decide(None, error=said, error_kind=ErrorKind.TLS)
    assert tls.action is Action.RETRY
    assert tls.delay == POLICY.tls_retry == 30.0
    assert tls.reason == said
    refused = decide(None, error="cannot connect", error_kind=ErrorKind.CONNECT)
    assert refused.delay == 0.0
    assert refused.reason == "connection error: cannot connect"


def test_400_bisects_then_quarantines_a_single_event() -> None:
    assert decide(400, size=2).action is Action.BISECT
    assert decide(400, size=1).action is Action.QUARANTINE


def test_413_splits_then_quarantines_a_single_event() -> None:
    assert decide(413, size=5000).action is Action.SPLIT
    assert decide(413, size=1).action is Action.QUARANTINE


def test_401_halts_and_404_backs_off_long_without_dropping() -> None:
    halt = decide(401)
    assert halt.action is Action.HALT
    assert halt.delay == 60.0
    disabled = decide(404)
    assert disabled.action is Action.DISABLED
    assert disabled.delay == 120.0


def test_connection_errors_say_why() -> None:
    d = decide(None, error="ConnectionRefusedError: [Errno 111]")
    assert d.action is Action.RETRY
    assert "ConnectionRefusedError" in d.reason


def test_no_outcome_ever_drops() -> None:
    actions = {decide(s, size=n).action for s in [None, *range(100, 600)] for n in (1, 2, 100)}
    assert "drop" not in {a.value for a in actions}


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
