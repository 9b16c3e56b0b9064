"""Record -> wire event (``rudder_fast.wire``), checked against docs/wire.md's event table. Pure.

Records are built by hand following the layout at the top of ``rudder_fast/events.py``::

    [kind, call_ns, user_id, anonymous_id, message_id, timestamp, context, integrations, *fields]

and passed through msgpack as the spool does.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rudder_fast import wire as wire_module
from rudder_fast.events import (
    KIND_ALIAS,
    KIND_GROUP,
    KIND_IDENTIFY,
    KIND_PAGE,
    KIND_SCREEN,
    KIND_TRACK,
    build_record,
    check_timestamp,
)
from rudder_fast.framing import EventRun
from rudder_fast.jsonvalue import encode_json_field, iso_utc_ms
from rudder_fast.wire import COLUMN_RUN, IsoClock, StubEncoder, WireMapper, plain_track_decoder
from tests.support.native import both_ways

# The encoder's tests (marked `usefixtures("way")`) run twice: with the C writer of plain tracks' stubs,
# and with the Python way alone.
way = both_ways(wire_module, "native_plain_track_stubs")

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
VERSION = "9.8.7"
NONCE = "0123456789abcdef"
LIBRARY = {"name": "rudder-fast", "version": VERSION}
CALL = dt.datetime(2026, 11, 26, 10, 1, 2, 345678, tzinfo=UTC)
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def ns(moment: dt.datetime) -> int:
    return (moment - EPOCH) // dt.timedelta(microseconds=1) * 1000


CALL_NS = ns(CALL) + 901  # sub-microsecond digits must not matter
CALL_ISO = "2026-11-26T10:01:02.345Z"


def wire(record: list[Any], seq: int = 7, *, version: str = VERSION) -> dict[str, Any]:
    """The event as the data plane receives it: through msgpack (the spool) and orjson (the request)."""
    stored = msgpack.unpackb(msgpack.packb(record))
    event = WireMapper(version).event(stored, NONCE, seq)
    received: dict[str, Any] = orjson.loads(orjson.dumps(event))
    return received


def rec(
    kind: int, *fields: Any, user_id: str | None = "u1", anonymous_id: str | None = None, **common: Any
) -> list[Any]:
    return [
        kind,
        CALL_NS,
        user_id,
        anonymous_id,
        common.get("message_id"),
        common.get("timestamp"),
        common.get("context"),
        common.get("integrations"),
        *fields,
    ]


def base(kind: str, **extra: Any) -> dict[str, Any]:
    event = {
        "type": kind,
        "messageId": f"{NONCE}-7",
        "userId": "u1",
        "channel": "server",
        "context": {"library": LIBRARY},
        "integrations": {"All": True},
        "originalTimestamp": CALL_ISO,
    }
    event.update(extra)
    return event


# -- per kind, the exact JSON ------------------------------------------------------------------------


def test_track() -> None:
    props = encode_json_field("properties", {"revenue": 19.95, "shippingMethod": "Premium"})
    got = wire(rec(KIND_TRACK, "Item Viewed", props))
    assert got == base(
        "track", event="Item Viewed", properties={"revenue": 19.95, "shippingMethod": "Premium"}
    )


def test_track_without_properties() -> None:
    got = wire(rec(KIND_TRACK, "Signed Up", None))
    assert got.pop("properties", {}) == {}
    assert got == base("track", event="Signed Up")


def test_identify_copies_traits_into_context() -> None:
    traits = encode_json_field("traits", {"name": "Name Username", "email": "name@website.com"})
    got = wire(rec(KIND_IDENTIFY, traits))
    expected_traits = {"name": "Name Username", "email": "name@website.com"}
    assert got == base(
        "identify",
        traits=expected_traits,
        context={"library": LIBRARY, "traits": expected_traits},
    )


def test_identify_without_traits() -> None:
    got = wire(rec(KIND_IDENTIFY, None))
    assert got.pop("traits", {}) == {}
    assert got["context"].pop("traits", {}) == {}
    assert got == base("identify")


@pytest.mark.parametrize(("kind", "name"), [(KIND_PAGE, "page"), (KIND_SCREEN, "screen")])
def test_page_and_screen(kind: int, name: str) -> None:
    props = encode_json_field("properties", {"url": "https://dominos.com"})
    got = wire(rec(kind, "Pizza", "Food", props))
    assert got == base(name, name="Pizza", category="Food", properties={"url": "https://dominos.com"})


@pytest.mark.parametrize(("kind", "name"), [(KIND_PAGE, "page"), (KIND_SCREEN, "screen")])
def test_page_and_screen_minimal(kind: int, name: str) -> None:
    got = wire(rec(kind, None, None, None, user_id=None, anonymous_id="a-1"))
    assert got.pop("properties", {}) == {}
    expected = base(name, anonymousId="a-1")
    del expected["userId"]
    assert got == expected


def test_group() -> None:
    traits = encode_json_field("traits", {"name": "Company"})
    got = wire(rec(KIND_GROUP, "1", traits, user_id="12345"))
    assert got == base("group", userId="12345", groupId="1", traits={"name": "Company"})


def test_group_without_traits() -> None:
    got = wire(rec(KIND_GROUP, "g-9", None))
    assert got.pop("traits", {}) == {}
    assert got == base("group", groupId="g-9")


def test_alias() -> None:
    got = wire(rec(KIND_ALIAS, "old_id", user_id="new_id"))
    assert got == base("alias", userId="new_id", previousId="old_id")


# -- common fields -----------------------------------------------------------------------------------


def test_both_ids_and_anonymous_only() -> None:
    got = wire(rec(KIND_TRACK, "e", None, user_id="u", anonymous_id="a"))
    assert (got["userId"], got["anonymousId"]) == ("u", "a")
    got = wire(rec(KIND_TRACK, "e", None, user_id=None, anonymous_id="a"))
    assert "userId" not in got
    assert got["anonymousId"] == "a"


def test_message_id_default_and_given() -> None:
    assert wire(rec(KIND_TRACK, "e", None), seq=0)["messageId"] == f"{NONCE}-0"
    assert wire(rec(KIND_TRACK, "e", None), seq=123456789)["messageId"] == f"{NONCE}-123456789"
    assert wire(rec(KIND_TRACK, "e", None, message_id="mine-1"), seq=3)["messageId"] == "mine-1"


def test_caller_context_is_merged_over_the_library() -> None:
    context = encode_json_field("context", {"ip": "1.2.3.4", "locale": "en-US", "app": {"name": "web"}})
    got = wire(rec(KIND_TRACK, "e", None, context=context))
    assert got["context"] == {"library": LIBRARY, "ip": "1.2.3.4", "locale": "en-US", "app": {"name": "web"}}


def test_caller_context_keys_win() -> None:
    context = encode_json_field("context", {"library": {"name": "wrapper", "version": "1"}, "ip": "::1"})
    got = wire(rec(KIND_TRACK, "e", None, context=context))
    assert got["context"] == {"library": {"name": "wrapper", "version": "1"}, "ip": "::1"}


def test_identify_with_caller_context() -> None:
    context = encode_json_field("context", {"ip": "::1"})
    traits = encode_json_field("traits", {"plan": "pro"})
    got = wire(rec(KIND_IDENTIFY, traits, context=context))
    assert got["context"] == {"library": LIBRARY, "ip": "::1", "traits": {"plan": "pro"}}
    assert got["traits"] == {"plan": "pro"}


def test_integrations_default_and_given() -> None:
    assert wire(rec(KIND_TRACK, "e", None))["integrations"] == {"All": True}
    given_ = encode_json_field("integrations", {"All": False, "Amplitude": True})
    assert wire(rec(KIND_TRACK, "e", None, integrations=given_))["integrations"] == {
        "All": False,
        "Amplitude": True,
    }


def test_timestamp_only_when_given() -> None:
    assert "timestamp" not in wire(rec(KIND_TRACK, "e", None))
    historical = dt.datetime(2020, 2, 3, 4, 5, 6, 789999, tzinfo=UTC)
    got = wire(rec(KIND_TRACK, "e", None, timestamp=check_timestamp(historical)))
    assert got["timestamp"] == "2020-02-03T04:05:06.789Z"
    assert got["originalTimestamp"] == CALL_ISO
    verbatim = "2020-02-03T06:05:06.7+02:00"
    assert wire(rec(KIND_TRACK, "e", None, timestamp=verbatim))["timestamp"] == verbatim


def test_no_sent_at_and_library_version() -> None:
    for record in [
        rec(KIND_TRACK, "e", None),
        rec(KIND_IDENTIFY, None),
        rec(KIND_PAGE, None, None, None),
        rec(KIND_SCREEN, None, None, None),
        rec(KIND_GROUP, "g", None),
        rec(KIND_ALIAS, "p"),
    ]:
        got = wire(record, version="0.0.1-test")
        assert "sentAt" not in got
        assert got["channel"] == "server"
        assert got["context"]["library"] == {"name": "rudder-fast", "version": "0.0.1-test"}
        assert ISO_RE.match(got["originalTimestamp"])


def test_json_fields_are_spliced_unchanged() -> None:
    """The bytes encoded at the call reach the request as they are: key order, number spelling."""
    props = encode_json_field("properties", {"z": 1, "a": 1.10, "m": [3, 2, 1]})
    assert props == b'{"z":1,"a":1.1,"m":[3,2,1]}'
    event = WireMapper(VERSION).event(rec(KIND_TRACK, "e", props), NONCE, 1)
    assert b'"properties":' + props in orjson.dumps(event)


def test_field_order_is_stable() -> None:
    event = WireMapper(VERSION).event(rec(KIND_TRACK, "e", b"{}", anonymous_id="a"), NONCE, 1)
    assert list(event) == [
        "type",
        "messageId",
        "userId",
        "anonymousId",
        "channel",
        "context",
        "integrations",
        "originalTimestamp",
        "event",
        "properties",
    ]


@pytest.mark.parametrize(
    "record", [[0, CALL_NS, "u", None, None, None, None, None], [99] + [None] * 9, [KIND_TRACK, 1]]
)
def test_unreadable_records_raise_value_error(record: list[Any]) -> None:
    with pytest.raises(ValueError, match="unknown record kind"):
        WireMapper(VERSION).event(record, NONCE, 0)


def test_build_record_to_wire() -> None:
    """A record made by the events module maps to the event of the call."""
    record = build_record(
        KIND_PAGE,
        CALL_NS,
        user_id=" ",
        anonymous_id="anon",
        context={"page": {"path": "/menu"}},
        integrations=None,
        timestamp=dt.datetime(2024, 1, 2, 3, 4, 5),
        message_id="m-42",
        fields=["Pizza", "Food", encode_json_field("properties", {"price": 9})],
    )
    assert wire(record) == {
        "type": "page",
        "messageId": "m-42",
        "anonymousId": "anon",
        "channel": "server",
        "context": {"library": LIBRARY, "page": {"path": "/menu"}},
        "integrations": {"All": True},
        "originalTimestamp": CALL_ISO,
        "timestamp": "2024-01-02T03:04:05.000Z",
        "name": "Pizza",
        "category": "Food",
        "properties": {"price": 9},
    }


# -- properties --------------------------------------------------------------------------------------

MAX_NS = ns(dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
MIN_NS = ns(dt.datetime(1, 1, 1, tzinfo=UTC))


def _iso_of_ns(value: int) -> str:
    moment = EPOCH + dt.timedelta(microseconds=value // 1000)
    return iso_utc_ms(moment)


# Second -1 (1969-12-31T23:59:59) is left to the example test below, which it fails.
instants = st.integers(MIN_NS, MAX_NS).filter(lambda v: v // 1_000_000_000 != -1)


@PROPERTY
@given(st.lists(instants, min_size=1, max_size=20))
def test_iso_clock_matches_datetime_and_its_cache_is_sound(values: list[int]) -> None:
    clock = IsoClock()
    for value in values:
        text = clock.format_ns(value)
        assert ISO_RE.match(text)
        assert text == _iso_of_ns(value) == IsoClock().format_ns(value)


@PROPERTY
@given(st.integers(0, (2**64 - 1) // 1_000_000_000), st.integers(0, 999_999_999))  # a record's range
def test_iso_clock_within_one_second(second: int, sub: int) -> None:
    clock = IsoClock()
    clock.format_ns(second * 1_000_000_000)  # prime the per-second cache
    assert clock.format_ns(second * 1_000_000_000 + sub).endswith(f".{sub // 1_000_000:03d}Z")


def test_iso_clock_second_before_the_epoch() -> None:
    """The clock's "nothing cached yet" marker is second -1, a real second (1969-12-31T23:59:59):
    a fresh clock formats any time in it as just "<ms>Z"."""
    assert IsoClock().format_ns(-500_000_000) == "1969-12-31T23:59:59.500Z"
    assert IsoClock().format_ns(-1) == "1969-12-31T23:59:59.999Z"


# Integer nanoseconds in a record must fit msgpack's int64/uint64: years 1678..2554.
@PROPERTY
@given(st.datetimes(min_value=dt.datetime(1678, 1, 1), max_value=dt.datetime(2554, 1, 1)))
def test_caller_timestamp_formats_like_the_value_normaliser(moment: dt.datetime) -> None:
    ts = check_timestamp(moment)
    assert wire(rec(KIND_TRACK, "e", None, timestamp=ts))["timestamp"] == iso_utc_ms(moment)


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
json_object = st.dictionaries(st.text(max_size=8), json_value, max_size=5)
ids = st.text(min_size=1, max_size=20).filter(lambda s: s.strip() == s and s.isprintable() and s)


@PROPERTY
@given(
    st.sampled_from([KIND_TRACK, KIND_IDENTIFY, KIND_PAGE, KIND_SCREEN, KIND_GROUP, KIND_ALIAS]),
    st.one_of(st.none(), ids),
    ids,
    st.one_of(st.none(), json_object),
    st.one_of(st.none(), json_object),
    st.one_of(st.none(), json_object),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),  # time.time_ns() of the call
)
def test_any_record_maps_to_its_inputs(
    kind: int,
    user_id: str | None,
    anon: str,
    payload: dict[str, Any] | None,
    context: dict[str, Any] | None,
    integrations: dict[str, Any] | None,
    seq: int,
    call_ns: int,
) -> None:
    data = encode_json_field("x", payload)
    fields_by_kind: dict[int, list[Any]] = {
        KIND_TRACK: ["Ev", data],
        KIND_IDENTIFY: [data],
        KIND_PAGE: ["N", "C", data],
        KIND_SCREEN: ["N", "C", data],
        KIND_GROUP: ["G", data],
        KIND_ALIAS: ["P"],
    }
    fields = fields_by_kind[kind]
    record = [kind, call_ns, user_id, anon, None, None, encode_json_field("c", context)]
    record += [encode_json_field("i", integrations), *fields]
    got = wire(record, seq)
    assert got["messageId"] == f"{NONCE}-{seq}"
    assert got.get("userId") == user_id
    assert got["anonymousId"] == anon
    assert got["channel"] == "server"
    assert got["originalTimestamp"] == _iso_of_ns(call_ns)
    assert got["integrations"] == (integrations if integrations is not None else {"All": True})
    expected_context: dict[str, Any] = {"library": LIBRARY, **(context or {})}
    if kind == KIND_IDENTIFY and payload is not None:
        expected_context["traits"] = payload
    assert got["context"] == expected_context
    assert "sentAt" not in got
    assert "timestamp" not in got
    key = {KIND_TRACK: "properties", KIND_PAGE: "properties", KIND_SCREEN: "properties"}.get(kind, "traits")
    if kind != KIND_ALIAS:
        assert got.get(key, {} if payload is None else None) == (payload if payload is not None else {})
    names = {
        KIND_TRACK: {"type": "track", "event": "Ev"},
        KIND_IDENTIFY: {"type": "identify"},
        KIND_PAGE: {"type": "page", "name": "N", "category": "C"},
        KIND_SCREEN: {"type": "screen", "name": "N", "category": "C"},
        KIND_GROUP: {"type": "group", "groupId": "G"},
        KIND_ALIAS: {"type": "alias", "previousId": "P"},
    }[kind]
    assert {k: got[k] for k in names} == names


# -- the sender's fast path: StubEncoder gives the mapper's bytes ------------------------------------


def reference_stub(mapper: WireMapper, payload: bytes, seq: int) -> bytes | None:
    """What the sender sent before the fast path: the mapper's dict, encoded, without its brace."""
    try:
        return orjson.dumps(mapper.event(msgpack.unpackb(payload), NONCE, seq))[:-1]
    except Exception:  # noqa: BLE001 - any failure is an unreadable record: None
        return None


contexts = st.one_of(
    st.none(),
    json_object,
    st.builds(lambda d, lib: {**d, "library": lib}, json_object, json_value),  # the caller's library wins
    st.builds(lambda d: {"traits": d}, json_object),
    st.just({}),
)
timestamps = st.one_of(st.none(), st.integers(0, 2**63 - 1), st.just("2026-11-26T10:01:02.345Z"))


def any_record(
    kind: int, uid: Any, aid: Any, mid: Any, ts: Any, ctx: Any, integ: Any, payload: Any, call_ns: int
) -> list[Any]:
    fields: dict[int, list[Any]] = {
        KIND_TRACK: ["Ev", encode_json_field("p", payload)],
        KIND_IDENTIFY: [encode_json_field("t", payload)],
        KIND_PAGE: ["N", None, encode_json_field("p", payload)],
        KIND_SCREEN: [None, "C", encode_json_field("p", payload)],
        KIND_GROUP: ["G", encode_json_field("t", payload)],
        KIND_ALIAS: ["P"],
    }
    common = [kind, call_ns, uid, aid, mid, ts, encode_json_field("c", ctx), encode_json_field("i", integ)]
    return common + fields[kind]


records = st.builds(
    any_record,
    st.sampled_from([KIND_TRACK, KIND_IDENTIFY, KIND_PAGE, KIND_SCREEN, KIND_GROUP, KIND_ALIAS]),
    st.one_of(st.none(), ids),
    st.one_of(st.none(), ids),
    st.one_of(st.none(), ids),
    timestamps,
    contexts,
    st.one_of(st.none(), json_object),
    st.one_of(st.none(), json_object),
    st.one_of(st.integers(0, 2**63 - 1), st.integers(1_764_000_000_000_000_000, 1_764_000_000_100_000_000)),
)
# Records this version cannot read, or reads only the slow way: wrong shapes and types anywhere.
odd_records = st.one_of(
    st.lists(st.one_of(json_leaf, st.binary(max_size=8)), max_size=12),
    records.flatmap(
        lambda r: st.tuples(st.integers(0, len(r) - 1), st.one_of(json_leaf, st.binary(max_size=8))).map(
            lambda change: [*r[: change[0]], change[1], *r[change[0] + 1 :]]
        )
    ),
    records.map(lambda r: r[: len(r) - 1]),
    json_leaf,
)


@pytest.mark.usefixtures("way")
@PROPERTY
@given(st.lists(st.one_of(records, records, records, odd_records), max_size=8), st.integers(0, 2**63))
def test_stub_encoder_gives_exactly_the_mappers_bytes(items: list[Any], first_seq: int) -> None:
    """Each stub is byte for byte the reference encoding of the mapper's event; an unreadable record is
    None exactly where the mapper refuses it. Several records per run exercise the per-run caches."""
    mapper = WireMapper(VERSION)
    encoder = StubEncoder(WireMapper(VERSION))
    run = []
    for i, item in enumerate(items):
        try:
            payload = msgpack.packb(item)
        except (TypeError, ValueError, OverflowError):
            continue
        run.append((first_seq + i, payload, 0))
    got = encoder.stubs(EventRun.of(run), NONCE)
    assert got == [reference_stub(mapper, payload, seq) for seq, payload, _ in run]
    assert len(got) == len(run)


plain_tracks = st.builds(
    lambda uid, aid, event, props, call_ns: [
        KIND_TRACK,
        call_ns,
        uid,
        aid,
        None,
        None,
        None,
        None,
        event,
        props,
    ],
    st.one_of(st.none(), ids, st.sampled_from(["u-1", "u-2", 'q"\\\u2028'])),
    st.one_of(st.none(), ids),
    st.one_of(st.text(max_size=12), st.sampled_from(["Order Completed", "Signed Up"])),
    st.one_of(st.none(), json_object.map(lambda o: encode_json_field("p", o))),
    st.one_of(
        st.integers(0, 2**63 - 1),
        st.integers(1_764_000_000_000_000_000, 1_764_000_000_010_000_000),  # many share a millisecond
    ),
)


# The Python way only: the C writer takes these runs of plain tracks before either reader is asked
# (tests/unit/test_speedups.py holds it to this path), so they would test the same thing twice.
@pytest.mark.usefixtures("way")
@pytest.mark.parametrize("way", ["python"], indirect=True)
@pytest.mark.parametrize("reader", ["msgspec", "msgpack"])
@PROPERTY
@given(
    st.lists(plain_tracks, min_size=COLUMN_RUN, max_size=COLUMN_RUN + 8),
    st.lists(
        st.one_of(
            records.filter(lambda r: r[0] != KIND_TRACK),
            odd_records.filter(lambda r: not (isinstance(r, list) and len(r) == 10)),  # a plain track has 10
        ),
        max_size=2,
    ),
    st.integers(0, 2**64 - 1 - (COLUMN_RUN + 10)),  # a frame's seq is a u64
    st.integers(1, 3),
)
def test_runs_of_plain_tracks_are_encoded_a_column_at_a_time_to_the_mappers_bytes(
    reader: str, plain: list[Any], others: list[Any], first_seq: int, repeats: int
) -> None:
    """The column-at-a-time path (a run of plain tracks only) gives the reference bytes, whether msgspec
    or msgpack reads the records; any other record in the run sends the run the one-by-one way, which
    gives them too. Encoding the run again exercises the caches."""
    assert wire_module.native_plain_track_stubs is None, "the Python way"
    mapper = WireMapper(VERSION)
    encoder = StubEncoder(WireMapper(VERSION))
    if reader == "msgpack":
        encoder.decode_plain_track = None  # as without msgspec
    by_one = encoder._one_by_one
    taken_one_by_one = 0

    def counting(*args: Any) -> list[bytes | None]:
        nonlocal taken_one_by_one
        taken_one_by_one += 1
        return by_one(*args)

    encoder._one_by_one = counting  # type: ignore[method-assign,assignment]
    items = plain + others
    run = EventRun.of((first_seq + i, msgpack.packb(item), 0) for i, item in enumerate(items))
    for _ in range(repeats):
        assert encoder.stubs(run, NONCE) == [reference_stub(mapper, p, s) for s, p, _ in run]
    assert taken_one_by_one == (repeats if others else 0)


@pytest.mark.usefixtures("way")
@pytest.mark.parametrize(
    ("user", "anon", "props"),
    [
        (lambda i: f"u{i % 7}", lambda i: None, lambda i: encode_json_field("p", {"i": i})),  # the usual
        (lambda i: None, lambda i: f"a{i}", lambda i: None),  # no user ids, no properties
        (
            lambda i: f"u{i}" if i % 3 else None,
            lambda i: "a" if i % 2 else None,
            lambda i: None if i % 5 else b"{}",
        ),
    ],
    ids=["users-and-properties", "anonymous-without-properties", "mixed"],
)
def test_each_column_shape_of_a_run_of_plain_tracks_gives_the_mappers_bytes(
    user: Any, anon: Any, props: Any
) -> None:
    """Columns that are skipped (every id None) or merged (every event with properties) included;
    twice, the second time from the caches."""
    mapper = WireMapper(VERSION)
    encoder = StubEncoder(WireMapper(VERSION))
    records = [
        [KIND_TRACK, CALL_NS + i * 300_000, user(i), anon(i), None, None, None, None, f"E{i % 3}", props(i)]
        for i in range(COLUMN_RUN * 2)
    ]
    run = EventRun.of((1000 + i, msgpack.packb(r), 0) for i, r in enumerate(records))
    want = [reference_stub(mapper, p, s) for s, p, _ in run]
    assert encoder._plain_tracks(
        [msgpack.unpackb(p) for p in run.payloads], run.seqs, b'"' + NONCE.encode() + b"-"
    )
    assert encoder.stubs(run, NONCE) == want
    assert encoder.stubs(run, NONCE) == want


@pytest.mark.usefixtures("way")
@pytest.mark.parametrize(
    "odd",
    [-(2**63), 2**64 - 1, ["a", "list"]],
    ids=["time-in-1677", "time-in-2554", "unhashable-user-id"],
)
def test_an_odd_value_in_a_long_run_of_plain_tracks_gives_the_mappers_bytes(odd: Any) -> None:
    """Extreme times and a value no producer writes: the column-at-a-time path never raises, and the
    stubs are the mapper's (None only where it refuses the record)."""
    mapper = WireMapper(VERSION)
    encoder = StubEncoder(WireMapper(VERSION))
    records = [rec(KIND_TRACK, "E", b"{}", user_id=f"u{i}") for i in range(COLUMN_RUN * 2)]
    if isinstance(odd, list):
        records[5][2] = odd
    else:
        records[5][1] = odd
    run = EventRun.of((i, msgpack.packb(r), 0) for i, r in enumerate(records))
    got = encoder.stubs(run, NONCE)
    assert got == [reference_stub(mapper, p, s) for s, p, _ in run]
    assert sum(stub is not None for stub in got) >= len(records) - 1


def test_msgspec_reads_runs_of_plain_tracks_and_msgpack_the_runs_it_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """msgspec (a dependency) reads a run of plain tracks, checking each record's layout as it reads it;
    a run holding one record it refuses (an id that is not a string, a messageId of the caller's) is
    read again by msgpack. Both give the mapper's bytes. (The Python way: without the C writer.)"""
    monkeypatch.setattr(wire_module, "native_plain_track_stubs", None)
    assert plain_track_decoder() is not None
    mapper = WireMapper(VERSION)
    encoder = StubEncoder(WireMapper(VERSION))
    typed_runs = 0
    read_typed = encoder._typed_plain_tracks

    def counting(run: EventRun, generated: bytes) -> list[bytes] | None:
        nonlocal typed_runs
        stubs = read_typed(run, generated)
        typed_runs += stubs is not None
        return stubs

    encoder._typed_plain_tracks = counting  # type: ignore[method-assign]
    plain = [rec(KIND_TRACK, "E", b"{}", user_id=f"u{i}") for i in range(COLUMN_RUN)]
    for change, typed in [(None, 1), ((2, 42), 0), ((4, "m-1"), 0), ((1, 2.5), 0)]:
        records = [list(r) for r in plain]
        if change is not None:
            records[3][change[0]] = change[1]
        run = EventRun.of((i, msgpack.packb(r), 0) for i, r in enumerate(records))
        typed_runs = 0
        assert encoder.stubs(run, NONCE) == [reference_stub(mapper, p, s) for s, p, _ in run]
        assert typed_runs == typed, change


@pytest.mark.usefixtures("way")
def test_stub_encoder_fast_path_covers_the_benchmark_event() -> None:
    """The common record shapes are assembled, not handed to the mapper (which would be correct, slow)."""
    encoder = StubEncoder(WireMapper(VERSION))
    calls = 0
    slow = encoder._by_the_mapper

    def counting(payload: bytes, nonce: str, seq: int) -> bytes | None:
        nonlocal calls
        calls += 1
        return slow(payload, nonce, seq)

    encoder._by_the_mapper = counting  # type: ignore[method-assign]
    props = encode_json_field("properties", {"a": 1, "b": [1, 2], "c": {"d": "e"}})
    context = encode_json_field("context", {"ip": "1.2.3.4"})
    plain = rec(KIND_TRACK, "Ev", props)
    with_context = rec(KIND_TRACK, "Ev", props, context=context, message_id="m-1", timestamp=CALL_NS)
    identify = rec(KIND_IDENTIFY, encode_json_field("traits", {"x": 1}))
    run = [(i, msgpack.packb(r), 0) for i, r in enumerate([plain, with_context, identify])]
    stubs = encoder.stubs(EventRun.of(run), NONCE)
    assert calls == 0
    assert [orjson.loads(s + b"}") for s in stubs if s is not None] == [
        wire(plain, 0),
        wire(with_context, 1),
        wire(identify, 2),
    ]


def test_the_plain_track_layout_is_the_tables() -> None:
    from rudder_fast import wire as wire_module
    from rudder_fast.schema import CALLS

    assert tuple(f.name for f in CALLS["track"].fields) == wire_module._TRACK_FIELDS
    assert CALLS["track"].kind == wire_module.KIND_TRACK == KIND_TRACK


@pytest.mark.usefixtures("way")
def test_stub_encoder_says_why_a_record_cannot_be_read() -> None:
    encoder = StubEncoder(WireMapper(VERSION))
    assert encoder.stubs(EventRun.of([(1, msgpack.packb([99, CALL_NS]), 0), (2, b"\xc1", 0)]), NONCE) == [
        None,
        None,
    ]
    assert encoder.last_error.startswith(("ExtraData", "FormatError", "ValueError", "UnpackValueError"))
    encoder.stubs(
        EventRun.of([(1, msgpack.packb([99, CALL_NS, None, None, None, None, None, None]), 0)]), NONCE
    )
    assert encoder.last_error == "ValueError: unknown record kind 99"
