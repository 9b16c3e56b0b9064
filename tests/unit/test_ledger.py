"""The ledger's encoding: round trip, and any damage detected (then the sender starts over)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rudder_fast.counts import Counters
from rudder_fast.ledger import LedgerState, decode, encode


def sample() -> LedgerState:
    return LedgerState(
        generation=7,
        offsets={"abc-1-0.seg": 4096, "def-2-3.seg": 48},
        counters=Counters(sent=10, retried=2, rejected=1, skipped_bytes=5, dropped={"quota": 3}),
    )


def test_round_trip() -> None:
    state = decode(encode(sample()))
    assert state == sample()


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_is_detected(position: int, value: int) -> None:
    data = bytearray(encode(sample()))
    i = position % len(data)
    if data[i] == value:
        return
    data[i] = value
    state = decode(bytes(data))
    assert state is None or state == sample()


@given(st.integers(min_value=0))
def test_truncation_is_detected(cut: int) -> None:
    data = encode(sample())
    n = cut % len(data)
    assert decode(data[:n]) is None
