"""Request bodies and batch bounds: exact sizes, one sentAt per event, valid JSON."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rudder_fast import config
from rudder_fast.batching import (
    SERVER_MAX_BODY,
    Batch,
    body_pieces,
    body_size,
    build_body,
    halves,
    stub_of,
    total_size,
)
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


@given(events, st.integers(1, 400))
def test_body_pieces_join_to_the_body_and_each_is_about_the_piece_size(
    evts: list[dict[str, Any]], piece_bytes: int
) -> None:
    """The body the sender gzips piece by piece is the body, byte for byte. Between its opening and the
    last event's close, a piece holds whole events, ``piece_bytes`` of stubs at most, or one event."""
    stubs = [stub_of(orjson.dumps({"type": "track", **e})) for e in evts]
    assume(all(b'"sentAt"' not in stub for stub in stubs))  # the pieces' events are counted by it
    pieces = list(body_pieces(stubs, SENT_AT, piece_bytes))
    assert b"".join(pieces) == build_body(stubs, SENT_AT)
    if not stubs:
        assert pieces == [b'{"batch":[]}']
        return
    assert pieces[0] == b'{"batch":['
    assert pieces[-1] == b',"sentAt":"' + SENT_AT.encode() + b'"}]}'
    events = pieces[1:-1]
    cuts = [0]
    for i, piece in enumerate(events, 1):  # each ends with an event's close but the last: pieces[-1]
        cuts.append(cuts[-1] + piece.count(b'"sentAt"') + (i == len(events)))
    assert cuts[-1] == len(stubs)
    for start, stop in itertools.pairwise(cuts):
        assert stop - start == 1 or sum(map(len, stubs[start:stop])) <= piece_bytes


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


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 400), max_size=20),
    st.lists(st.integers(1, 400), min_size=1, max_size=20),
    st.integers(1, 30),
    st.integers(200, 6_000),
)
def test_room_for_a_run_is_room_for_each_of_its_events_in_turn(
    held: list[int], run: list[int], max_events: int, max_bytes: int
) -> None:
    """has_room_for + extend (the sender's path for a run of events) decide and do exactly what
    has_room + add one event at a time would, whatever the batch already holds."""
    one_by_one = Batch(1, 0.0, max_bytes, max_events)
    for size in held:
        if one_by_one.has_room(size):
            one_by_one.add(b"x" * size)
    bulk = Batch(1, 0.0, max_bytes, max_events)
    bulk.extend(list(one_by_one.stubs), one_by_one.stub_bytes)
    stubs = [b"y" * size for size in run]
    fits_each = True
    for stub in stubs:
        if not one_by_one.has_room(len(stub)):
            fits_each = False
            break
        one_by_one.add(stub)
    assert bulk.has_room_for(len(stubs), sum(run)) == fits_each
    if fits_each:
        bulk.extend(stubs, sum(run))
        assert (bulk.stubs, bulk.stub_bytes, bulk.size) == (
            one_by_one.stubs,
            one_by_one.stub_bytes,
            one_by_one.size,
        )


def test_total_size_is_none_when_a_stub_is_missing() -> None:
    assert total_size([b"ab", b"c"]) == 3
    assert total_size([]) == 0
    assert total_size([b"ab", None, b"c"]) is None
