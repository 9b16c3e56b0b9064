"""The quota's decisions (``rudder_fast.quota``): hysteresis, the control record, and the verdict a
producer draws from a publication or from its own measurement. Pure: no files, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rudder_fast import config, quota
from rudder_fast.quota import (
    DROP_OLDEST,
    OVER_QUOTA,
    RESUME_FRACTION,
    STALE_NS,
    UNBOUNDED,
    Control,
    Verdict,
    judge_publication,
    judge_usage,
    next_flags,
)

Q = 1_000_000
NOW = 1_800_000_000_000_000_000


def test_over_from_the_quota_up_and_back_under_only_below_the_resume_fraction() -> None:
    assert next_flags(False, Q - 1, Q) is False
    assert next_flags(False, Q, Q) is True
    # Once over, it stays over down to 90 %: the flag does not flicker at the boundary.
    assert next_flags(True, Q - 1, Q) is True
    assert next_flags(True, int(Q * RESUME_FRACTION), Q) is True
    assert next_flags(True, int(Q * RESUME_FRACTION) - 1, Q) is False
    assert next_flags(True, 10 * Q, 0) is False  # no quota


@given(st.booleans(), st.integers(0, 3 * Q), st.integers(1, 2 * Q))
def test_hysteresis_band(over: bool, usage: int, limit: int) -> None:
    result = next_flags(over, usage, limit)
    if usage >= limit:
        assert result
    elif usage < limit * RESUME_FRACTION:
        assert not result
    else:
        assert result is over  # inside the band the previous state holds


@given(
    st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_control_round_trip(flags: int, gen: int, q: int, usage: int, updated: int, pid: int) -> None:
    control = Control(flags, gen, q, usage, updated, pid)
    data = control.encode()
    assert len(data) == quota.CONTROL_SIZE
    assert Control.decode(data) == control


@pytest.mark.parametrize("data", [b"", b"RFCTRL01", b"\0" * 64, b"XXXXXXXX" + b"\0" * 56])
def test_a_short_or_foreign_control_record_is_none(data: bytes) -> None:
    assert Control.decode(data) is None


def published(flags: int = 0, usage: int = 0, updated: int = NOW, q: int = Q) -> Control:
    return Control(flags=flags, quota_bytes=q, usage_bytes=usage, updated_ns=updated, sender_pid=1)


def test_no_sender_or_a_stale_publication_means_measure_yourself() -> None:
    fresh = published()
    assert judge_publication(None, sender_alive=True, now_ns=NOW, grant_stamp=0, room_left=0) is None
    assert judge_publication(fresh, sender_alive=False, now_ns=NOW, grant_stamp=0, room_left=0) is None
    # A frozen sender still holds its lock, but publishes nothing new: stale after STALE_NS...
    late = NOW + STALE_NS + 1
    assert judge_publication(fresh, sender_alive=True, now_ns=late, grant_stamp=0, room_left=0) is None
    # ...and so is one from the future (the clock stepped back).
    early = NOW - STALE_NS - 1
    assert judge_publication(fresh, sender_alive=True, now_ns=early, grant_stamp=0, room_left=0) is None


def test_a_publication_grants_its_allowance_once() -> None:
    control = published(usage=Q - 5000)
    first = judge_publication(control, sender_alive=True, now_ns=NOW, grant_stamp=0, room_left=0)
    assert first == Verdict(False, 5000)
    # The same publication again, with the allowance used up: over, and no new grant.
    again = judge_publication(control, sender_alive=True, now_ns=NOW + 1, grant_stamp=NOW, room_left=0)
    assert again == Verdict(True)
    # With some left: write on, no new grant either.
    left = judge_publication(control, sender_alive=True, now_ns=NOW + 1, grant_stamp=NOW, room_left=10)
    assert left == Verdict(False)
    # A newer measurement grants again.
    newer = published(usage=Q - 7000, updated=NOW + 50)
    assert judge_publication(newer, sender_alive=True, now_ns=NOW + 60, grant_stamp=NOW, room_left=0) == (
        Verdict(False, 7000)
    )


def test_over_quota_and_the_other_policies() -> None:
    over = published(flags=OVER_QUOTA, usage=Q)
    assert judge_publication(over, sender_alive=True, now_ns=NOW, grant_stamp=0, room_left=99) == Verdict(
        True, 0
    )
    oldest = published(flags=DROP_OLDEST, usage=3 * Q)
    assert judge_publication(oldest, sender_alive=True, now_ns=NOW, grant_stamp=0, room_left=0) == (
        Verdict(False, UNBOUNDED)
    )
    no_quota = published(q=0)
    assert judge_publication(no_quota, sender_alive=True, now_ns=NOW, grant_stamp=0, room_left=0) == (
        Verdict(False, UNBOUNDED)
    )


def test_a_producers_own_measurement() -> None:
    assert judge_usage(False, 10 * Q, 0) == Verdict(False, UNBOUNDED)
    assert judge_usage(False, Q - 100, Q) == Verdict(False, 100)
    assert judge_usage(False, Q, Q) == Verdict(True, 0)
    assert judge_usage(True, int(Q * 0.95), Q) == Verdict(True, int(Q * 0.05))  # the band holds
    assert judge_usage(True, int(Q * 0.5), Q) == Verdict(False, int(Q * 0.5))


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("4K", 4096), ("512M", 512 << 20), ("2G", 2 << 30), ("1 MiB", 1 << 20), ("3kb", 3072)],
)
def test_sizes(text: str, size: int) -> None:
    assert config.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1", "512MB!", "10 X"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        config.parse_size(text)


# -- the producer's "no sender reads this spool" warning ------------------------------------------------

S = 1_000_000_000


def test_no_warning_before_a_minute_of_writing_without_a_sender_then_one_then_every_ten_minutes() -> None:
    watch = quota.UnreadSpoolWatch()
    assert watch.observe(NOW, sender_alive=False) is False  # the wait starts at the first sighting
    assert watch.observe(NOW + config.NO_SENDER_WARNING_NS - 1, sender_alive=False) is False
    assert watch.observe(NOW + config.NO_SENDER_WARNING_NS, sender_alive=False) is True
    later = NOW + config.NO_SENDER_WARNING_NS
    assert watch.observe(later + S, sender_alive=False) is False
    assert watch.observe(later + config.NO_SENDER_REPEAT_NS - 1, sender_alive=False) is False
    assert watch.observe(later + config.NO_SENDER_REPEAT_NS, sender_alive=False) is True


def test_a_sender_seen_restarts_the_wait() -> None:
    watch = quota.UnreadSpoolWatch()
    watch.observe(NOW, sender_alive=False)
    assert watch.observe(NOW + 59 * S, sender_alive=True) is False
    assert watch.observe(NOW + 61 * S, sender_alive=False) is False  # a new wait from here
    assert watch.observe(NOW + 61 * S + config.NO_SENDER_WARNING_NS, sender_alive=False) is True


def test_a_clock_stepping_back_restarts_the_wait_instead_of_warning_early_or_never() -> None:
    watch = quota.UnreadSpoolWatch()
    watch.observe(NOW, sender_alive=False)
    assert watch.observe(NOW - 3600 * S, sender_alive=False) is False
    assert watch.observe(NOW - 3600 * S + config.NO_SENDER_WARNING_NS, sender_alive=False) is True


def test_the_warning_names_the_directory_and_how_to_point_a_sender_at_it() -> None:
    from pathlib import Path

    text = quota.no_sender_warning(Path("/srv/app/spool"), 61.2)
    assert "/srv/app/spool" in text
    assert "rudder-fast-sender --spool-dir /srv/app/spool" in text
    assert config.ENV_SPOOL_DIR in text
    assert "61 s" in text
