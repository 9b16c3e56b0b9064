"""The retry policy, with a fake random source and an injected clock: no sleeping."""

from __future__ import annotations

import email.utils

import pytest

from rudder_fast.retry import Action, Decision, RetryPolicy, parse_retry_after


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


POLICY = RetryPolicy(base=0.5, cap=30.0, halt_retry=60.0, disabled_retry=120.0)


def decide(status: int | None, attempt: int = 1, size: int = 10, rnd: float = 1.0, **kw: object) -> Decision:
    return POLICY.decide(status, attempt=attempt, batch_size=size, rng=FixedRandom(rnd), **kw)  # type: ignore[arg-type]


def test_2xx_is_an_ack() -> None:
    assert decide(200).action is Action.ACK


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, None])
def test_transient_failures_are_retried_with_capped_exponential_backoff(status: int | None) -> None:
    delays = [decide(status, attempt=n).delay for n in range(1, 10)]
    assert [d.action for d in [decide(status, attempt=1)]] == [Action.RETRY]
    assert delays[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert max(delays) == 30.0


def test_full_jitter_spreads_the_delay_from_zero_to_the_ceiling() -> None:
    assert decide(503, attempt=4, rnd=0.0).delay == 0.0
    assert decide(503, attempt=4, rnd=0.5).delay == pytest.approx(2.0)
    assert decide(503, attempt=4, rnd=0.999).delay == pytest.approx(3.996)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert decide(503, attempt=10_000).delay == 30.0


def test_retry_after_wins_when_longer_and_is_bounded() -> None:
    assert decide(429, attempt=1, retry_after=7.0).delay == 7.0
    assert decide(429, attempt=6, rnd=1.0, retry_after=1.0).delay == 16.0
    assert decide(429, retry_after=10_000.0).delay == POLICY.retry_after_max


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
