"""Request bodies and batch bounds: exact sizes, one sentAt per event, valid JSON."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rudder_fast import config
from rudder_fast.batching import SERVER_MAX_BODY, body_size, build_body, halves, stub_of
from rudder_fast.errors import ConfigurationError

SENT_AT = "2026-11-26T10:01:02.345Z"

events = st.lists(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=20), st.none()),
        max_size=4,
    ),
    max_size=30,
)


@given(events)
def test_body_is_the_batch_with_sent_at_on_every_event_and_its_size_is_exact(
    evts: list[dict[str, Any]],
) -> None:
    stubs = [stub_of(orjson.dumps({"type": "track", **e})) for e in evts]
    body = build_body(stubs, SENT_AT)
    assert len(body) == body_size(sum(map(len, stubs)), len(stubs))
    if not stubs:
        return
    doc = orjson.loads(body)
    assert list(doc) == ["batch"]
    assert len(doc["batch"]) == len(evts)
    for sent, original in zip(doc["batch"], evts, strict=True):
        assert sent["sentAt"] == SENT_AT
        assert {k: v for k, v in sent.items() if k != "sentAt"} == {"type": "track", **original}


def test_limits_never_exceed_the_server_limit() -> None:
    given = {"write_key": "k", "data_plane_url": "http://127.0.0.1:1", "max_batch_bytes": SERVER_MAX_BODY + 1}
    with pytest.raises(ConfigurationError, match="--max-batch-bytes must be between"):
        config.sender_config(given, {})
    assert config.MAX_BATCH_BYTES < SERVER_MAX_BODY


@pytest.mark.parametrize("n", [2, 3, 10, 10_001])
def test_halves_cover_the_batch_without_overlap(n: int) -> None:
    a, b = halves(n)
    assert list(a) + list(b) == list(range(n))
    assert len(a) >= 1
    assert len(b) >= 1
