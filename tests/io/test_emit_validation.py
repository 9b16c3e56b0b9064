"""The Emitter against a real spool directory: a refused call raises InvalidEventError naming the field
and leaves the spool byte-for-byte as it was; an accepted call is in the spool, readable as its event.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from rudder_fast import Emitter, InvalidEventError, __version__
from rudder_fast.reading import scan_pending

MESSAGE_ID = re.compile(r"^[0-9a-f]{16}-(\d+)$")
UTC = dt.timezone.utc


def snapshot(spool: Path) -> dict[str, bytes]:
    """Every file under the spool with its bytes; a spool that does not exist yet is empty."""
    if not spool.exists():
        return {}
    return {str(p.relative_to(spool)): p.read_bytes() for p in sorted(spool.rglob("*")) if p.is_file()}


def pending(spool: Path) -> list[dict[str, Any]]:
    out: list[bytes] = []
    summary = scan_pending(spool, on_event=out.append)
    assert summary.undecodable == 0
    assert summary.skipped_bytes == 0
    return [orjson.loads(e) for e in out]


@pytest.fixture(params=["fresh", "warm"])
def emitter(request: pytest.FixtureRequest, spool_dir: Path) -> Emitter:
    """A new emitter: "fresh" has written nothing (no spool dir yet), "warm" has one event in its segment."""
    em = Emitter(spool_dir)
    if request.param == "warm":
        assert em.track(user_id="warm-up", event="Warm Up") is not None
    return em


# (call, positional mapping or None, keywords, the field the error must name)
NOT_A_MAPPING = [[("a", 1)], "text", 5, ("k", "v")]
INVALID: list[tuple[str, Any, dict[str, Any], str]] = [
    # identity
    ("track", None, {"event": "e"}, "user_id"),
    *[
        ("track", None, {"user_id": b, "event": "e"}, "user_id")
        for b in ["", "  ", "\u200b", "\ufeff", "\t\n"]
    ],
    *[("track", None, {"anonymous_id": b, "event": "e"}, "user_id") for b in ["", " \u200b", "\ufeff"]],
    ("track", None, {"user_id": "", "anonymous_id": "\u200b", "event": "e"}, "user_id"),
    ("identify", None, {"traits": {"a": 1}}, "user_id"),
    ("page", None, {"user_id": "\ufeff", "name": "Home"}, "user_id"),
    ("screen", None, {"anonymous_id": " "}, "user_id"),
    ("group", None, {"group_id": "g"}, "user_id"),
    ("alias", None, {"previous_id": "p", "user_id": "\u200b"}, "user_id"),
    ("track", None, {"user_id": 1.5, "event": "e"}, "user_id"),
    ("track", None, {"user_id": True, "event": "e"}, "user_id"),
    ("track", None, {"user_id": "u", "anonymous_id": ["a"], "event": "e"}, "anonymous_id"),
    # required per-kind fields
    ("track", None, {"user_id": "u"}, "event"),
    ("track", None, {"user_id": "u", "event": ""}, "event"),
    ("track", None, {"user_id": "u", "event": " \u200b"}, "event"),
    ("track", None, {"user_id": "u", "event": 5}, "event"),
    ("track", None, {"user_id": "u", "event": b"Item Viewed"}, "event"),
    ("group", None, {"user_id": "u"}, "group_id"),
    ("group", None, {"user_id": "u", "group_id": "  "}, "group_id"),
    ("alias", None, {"user_id": "u"}, "previous_id"),
    ("alias", None, {"user_id": "u", "previous_id": "\ufeff"}, "previous_id"),
    ("page", None, {"user_id": "u", "name": 5}, "name"),
    ("screen", None, {"user_id": "u", "category": ["c"]}, "category"),
    # mapping arguments that are not mappings
    *[("track", None, {"user_id": "u", "event": "e", "properties": v}, "properties") for v in NOT_A_MAPPING],
    ("track", None, {"user_id": "u", "event": "e", "context": "ctx"}, "context"),
    ("track", None, {"user_id": "u", "event": "e", "integrations": ["All"]}, "integrations"),
    ("identify", None, {"user_id": "u", "traits": [("name", "x")]}, "traits"),
    ("group", None, {"user_id": "u", "group_id": "g", "traits": "x"}, "traits"),
    ("page", None, {"user_id": "u", "properties": 1}, "properties"),
    ("alias", None, {"user_id": "u", "previous_id": "p", "context": 3}, "context"),
    # non-str keys, named by path
    ("track", None, {"user_id": "u", "event": "e", "properties": {1: "x"}}, "properties"),
    ("track", None, {"user_id": "u", "event": "e", "properties": {"a": {1: "x"}}}, "properties.a"),
    ("identify", None, {"user_id": "u", "traits": {"a": [{None: 1}]}}, "traits.a[0]"),
    ("track", None, {"user_id": "u", "event": "e", "context": {"x": {(1,): 2}}}, "context.x"),
    # values that cannot be encoded
    (
        "track",
        None,
        {"user_id": "u", "event": "e", "properties": {"a": [0, {"b": object()}]}},
        "properties.a[1].b",
    ),
    (
        "track",
        None,
        {"user_id": "u", "event": "e", "properties": {"a": [0, {"b": len}]}},
        "properties.a[1].b",
    ),
    (
        "track",
        None,
        {"user_id": "u", "event": "e", "properties": {"a": [0, {"b": dt.time(1)}]}},
        "properties.a[1].b",
    ),
    ("page", None, {"user_id": "u", "properties": {"f": lambda: 0}}, "properties.f"),
    ("group", None, {"user_id": "u", "group_id": "g", "traits": {"t": dt.timedelta(1)}}, "traits.t"),
    ("track", None, {"user_id": "u", "event": "e", "integrations": {"X": {"y": 1j}}}, "integrations.X.y"),
    # integers outside 64 bits
    ("track", None, {"user_id": "u", "event": "e", "properties": {"n": 2**64}}, "properties.n"),
    ("identify", None, {"user_id": "u", "traits": {"n": [-(2**63) - 1]}}, "traits.n[0]"),
    # invalid UTF-8 bytes, lone surrogates in values
    ("track", None, {"user_id": "u", "event": "e", "properties": {"b": b"\xff\xfe"}}, "properties.b"),
    ("identify", None, {"user_id": "u", "traits": {"s": ["ok", "\ud800"]}}, "traits.s[1]"),
    # timestamps
    ("track", None, {"user_id": "u", "event": "e", "timestamp": "last tuesday"}, "timestamp"),
    ("track", None, {"user_id": "u", "event": "e", "timestamp": 1_700_000_000}, "timestamp"),
    ("track", None, {"user_id": "u", "event": "e", "timestamp": "2024-01-01T00:00:00"}, "timestamp"),
    ("identify", None, {"user_id": "u", "timestamp": dt.date(2024, 1, 1)}, "timestamp"),
    ("alias", None, {"user_id": "u", "previous_id": "p", "timestamp": 1.5}, "timestamp"),
    # message ids
    ("track", None, {"user_id": "u", "event": "e", "message_id": ""}, "message_id"),
    ("track", None, {"user_id": "u", "event": "e", "message_id": 12}, "message_id"),
    # the mapping form
    ("track", {"userId": "u", "event": "e"}, {"user_id": "v"}, "user_id"),
    ("identify", {"userId": "u"}, {"traits": {"a": 1}}, "traits"),
    (
        "track",
        {"userId": "u", "event": "e", "originalTimestamp": "2024-01-01T00:00:00Z"},
        {},
        "message.originalTimestamp",
    ),
    ("track", {"userId": "u", "event": "e", "sentAt": "2024-01-01T00:00:00Z"}, {}, "message.sentAt"),
    ("group", {"userId": "u", "groupId": "g", "properties": {}}, {}, "message.properties"),
    ("page", {"userID": "u"}, {}, "message.userID"),
    ("track", {"userId": "u", "event": "e", "type": "page"}, {}, "message.type"),
    ("track", "not a mapping", {}, "message"),
    ("track", ["userId", "u"], {}, "message"),
    ("track", {"userId": "u"}, {}, "event"),
    ("group", {"userId": "u", "groupId": ""}, {}, "group_id"),
    ("alias", {"userId": "u"}, {}, "previous_id"),
    ("track", {"anonymousId": "\u200b", "event": "e"}, {}, "user_id"),
    ("track", {"userId": "u", "event": "e", "properties": {"a": {2: 1}}}, {}, "properties.a"),
]


def _ids(case: tuple[str, Any, dict[str, Any], str]) -> str:
    call, _, _, field = case
    return f"{call}-{field}"


@pytest.mark.parametrize("case", INVALID, ids=[_ids(c) for c in INVALID])
def test_invalid_call_raises_and_writes_nothing(
    emitter: Emitter, spool_dir: Path, case: tuple[str, Any, dict[str, Any], str]
) -> None:
    call, message, kwargs, field = case
    method: Callable[..., Any] = getattr(emitter, call)
    before = snapshot(spool_dir)
    stats_before = emitter.stats()
    args = () if message is None else (message,)
    with pytest.raises(InvalidEventError) as info:
        method(*args, **kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, ValueError)
    assert snapshot(spool_dir) == before, "a refused call changed the spool"
    assert emitter.stats() == stats_before


def test_refused_calls_leave_no_gap_in_sequence_numbers(spool_dir: Path) -> None:
    em = Emitter(spool_dir)
    first = em.track(user_id="u", event="one")
    for call, message, kwargs, _ in INVALID:
        method = getattr(em, call)
        args = () if message is None else (message,)
        with pytest.raises(InvalidEventError):
            method(*args, **kwargs)
    second = em.track(user_id="u", event="two")
    assert first is not None
    assert second is not None
    m1, m2 = MESSAGE_ID.match(first), MESSAGE_ID.match(second)
    assert m1
    assert m2
    assert first.rsplit("-", 1)[0] == second.rsplit("-", 1)[0]
    assert (int(m1.group(1)), int(m2.group(1))) == (0, 1)
    assert [e["event"] for e in pending(spool_dir)] == ["one", "two"]
    assert em.stats()["accepted"] == 2


# -- bugs kept as failing tests (see the report) -----------------------------------------------------

SURROGATE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("track", {"user_id": "\ud800", "event": "e"}, "user_id"),
    ("track", {"user_id": "u", "anonymous_id": "a\udc00", "event": "e"}, "anonymous_id"),
    ("track", {"user_id": "u", "event": "Item \ud800"}, "event"),
    ("track", {"user_id": "u", "event": "e", "message_id": "m-\ud800"}, "message_id"),
    ("page", {"user_id": "u", "name": "\udfff"}, "name"),
    ("screen", {"user_id": "u", "category": "\ud800"}, "category"),
    ("group", {"user_id": "u", "group_id": "\ud800"}, "group_id"),
    ("alias", {"user_id": "u", "previous_id": "\ud800"}, "previous_id"),
]


@pytest.mark.parametrize("case", SURROGATE_CASES, ids=[c[2] for c in SURROGATE_CASES])
def test_lone_surrogate_in_a_string_argument(
    emitter: Emitter, spool_dir: Path, case: tuple[str, dict[str, Any], str]
) -> None:
    """A str argument with a lone surrogate cannot be UTF-8 encoded: InvalidEventError naming it,
    nothing written (today: UnicodeEncodeError from msgpack, after the segment file was created)."""
    call, kwargs, field = case
    before = snapshot(spool_dir)
    with pytest.raises(InvalidEventError) as info:
        getattr(emitter, call)(**kwargs)
    assert info.value.field == field
    assert snapshot(spool_dir) == before


def test_oversized_event_is_refused_without_touching_the_spool(emitter: Emitter, spool_dir: Path) -> None:
    """An event over the 4,000,000-byte frame limit is refused, naming the field, and nothing is written
    (today the segment is opened, header written, before the size is checked)."""
    before = snapshot(spool_dir)
    with pytest.raises(InvalidEventError) as info:
        emitter.track(user_id="u", event="Big", properties={"blob": "x" * 4_100_000})
    assert info.value.field == "properties"
    assert snapshot(spool_dir) == before


@pytest.mark.parametrize(
    ("call", "kwargs", "field"),
    [
        ("page", {"user_id": "u", "name": "\x02" * 990_000}, "name"),
        ("track", {"user_id": "u", "event": "E" + "\x01" * 700_000}, "event"),
        ("alias", {"user_id": "u", "previous_id": "p" + "\x1f" * 800_000}, "previous_id"),
        ("track", {"user_id": "u" + "\x02" * 700_000, "event": "e"}, "user_id"),
    ],
    ids=["page-name", "track-event", "alias-previous_id", "user_id"],
)
def test_an_event_whose_json_would_be_too_large_is_refused_at_the_call(
    emitter: Emitter, spool_dir: Path, call: str, kwargs: dict[str, Any], field: str
) -> None:
    """Control characters in a raw string field grow six times as JSON (``\u0002``): under 1 MB in the
    spool, over the data plane's 4,000,000-byte limit on the wire. Refused at the call, never accepted
    to be quarantined with 413 later."""
    before = snapshot(spool_dir)
    with pytest.raises(InvalidEventError) as info:
        getattr(emitter, call)(**kwargs)
    assert info.value.field == field
    assert "as JSON" in str(info.value)
    assert snapshot(spool_dir) == before


@pytest.mark.parametrize(
    "ts",
    [dt.datetime.min, dt.datetime(1600, 1, 1), dt.datetime(2600, 1, 1, tzinfo=UTC), dt.datetime.max],
    ids=["min", "1600", "2600", "max"],
)
def test_far_timestamps_are_stored_or_refused(emitter: Emitter, spool_dir: Path, ts: dt.datetime) -> None:
    """A datetime timestamp is either accepted (and then stored and readable) or refused with
    InvalidEventError("timestamp") writing nothing (today: OverflowError from msgpack)."""
    before = snapshot(spool_dir)
    refused: InvalidEventError | None = None
    try:
        mid = emitter.track(user_id="u", event="Far", timestamp=ts)
    except InvalidEventError as err:
        refused = err
    if refused is not None:  # refused at the call: it must say which field
        assert refused.field == "timestamp"
        assert snapshot(spool_dir) == before
        return
    assert mid is not None
    (event,) = [e for e in pending(spool_dir) if e["messageId"] == mid]
    assert event["timestamp"].startswith(f"{ts.year:04d}-")


@pytest.mark.parametrize(
    "value",
    [decimal.Decimal("1E+400"), {"deep": [decimal.Decimal("-2E+308")]}],
    ids=["1E+400", "nested"],
)
@pytest.mark.parametrize("field", ["context", "properties"])
def test_accepted_values_are_readable_by_the_sender(spool_dir: Path, value: Any, field: str) -> None:
    """Whatever a call accepts, the sender can read back: a Decimal beyond float range is stored as the
    JSON number 1E+400, which orjson refuses (the caller's context is parsed by the wire mapper, so
    the event becomes "undecodable"; in properties it reaches the data plane, whose JSON parsers refuse
    it likewise). Either refuse it at the call or map it to null."""
    em = Emitter(spool_dir)
    refused: InvalidEventError | None = None
    try:
        kwargs: dict[str, Any] = {field: {"x": value}}
        mid = em.track(user_id="u", event="e", **kwargs)
    except InvalidEventError as err:
        refused = err
    if refused is not None:  # refused at the call: it must say which field
        assert refused.field.startswith(f"{field}.x")
        return
    out: list[bytes] = []
    summary = scan_pending(spool_dir, on_event=out.append)
    assert summary.undecodable == 0
    (raw,) = out
    event = orjson.loads(raw)  # what a strict JSON reader on the other side makes of it
    assert event["messageId"] == mid


# -- accepted calls ----------------------------------------------------------------------------------


def test_message_ids(spool_dir: Path) -> None:
    em = Emitter(spool_dir)
    ids = [
        em.track(user_id="u", event="e"),
        em.identify(user_id="u"),
        em.page(anonymous_id="a"),
        em.screen(anonymous_id="a", name="Home"),
        em.group(user_id="u", group_id="g"),
        em.alias(user_id="u", previous_id="p"),
        em.track({"userId": "u", "event": "e"}),
    ]
    seqs = []
    for mid in ids:
        assert mid is not None
        m = MESSAGE_ID.match(mid)
        assert m, mid
        seqs.append(int(m.group(1)))
    assert seqs == list(range(len(ids)))
    assert len({mid.rsplit("-", 1)[0] for mid in ids if mid}) == 1
    assert em.track(user_id="u", event="e", message_id="my-own-id") == "my-own-id"
    u = uuid.UUID(int=7)
    # A UUID is accepted where the annotation says str.
    assert em.track(user_id="u", event="e", message_id=u) == str(u)  # type: ignore[arg-type]
    assert em.track({"userId": "u", "event": "e", "messageId": "m-9"}) == "m-9"
    assert [e["messageId"] for e in pending(spool_dir)] == [*ids, "my-own-id", str(u), "m-9"]


def test_two_emitters_have_distinct_nonces(tmp_path: Path) -> None:
    a = Emitter(tmp_path / "spool").track(user_id="u", event="e")
    b = Emitter(tmp_path / "spool").track(user_id="u", event="e")
    assert a
    assert b
    assert a.split("-")[0] != b.split("-")[0]


def test_accepted_calls_read_back_as_wire_events(spool_dir: Path) -> None:
    """Every kind, through the real spool and back: the event of docs/wire.md's table."""
    em = Emitter(spool_dir)
    ts = dt.datetime(2024, 3, 4, 5, 6, 7, 891234, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    em.track(
        user_id="123456",
        event="Item Viewed",
        properties={"revenue": decimal.Decimal("19.95"), "when": ts, "tags": {"b", "a"}},
        context={"ip": "1.2.3.4"},
        integrations={"All": False},
        timestamp=ts,
    )
    em.identify(user_id="123456", traits={"name": "Name Username"})
    em.page(user_id="12345", category="Food", name="Pizza", properties={"url": "https://dominos.com"})
    em.screen(anonymous_id="a-1", name="Home")
    em.group(user_id="12345", group_id="1", traits={"name": "Company"})
    em.alias(previous_id="old_id", user_id="new_id")
    em.track({"anonymousId": "a-2", "event": "Docs Form", "properties": {"n": 1}})
    events = pending(spool_dir)
    library = {"name": "rudder-fast", "version": __version__}
    for e in events:
        assert e["channel"] == "server"
        assert "sentAt" not in e
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", e.pop("originalTimestamp"))
        assert MESSAGE_ID.match(e.pop("messageId"))
        del e["channel"]
    track, identify, page, screen, group, alias, docs = events
    assert track == {
        "type": "track",
        "userId": "123456",
        "context": {"library": library, "ip": "1.2.3.4"},
        "integrations": {"All": False},
        "timestamp": "2024-03-04T04:06:07.891Z",
        "event": "Item Viewed",
        "properties": {"revenue": 19.95, "when": "2024-03-04T04:06:07.891Z", "tags": ["a", "b"]},
    }
    assert identify == {
        "type": "identify",
        "userId": "123456",
        "context": {"library": library, "traits": {"name": "Name Username"}},
        "integrations": {"All": True},
        "traits": {"name": "Name Username"},
    }
    assert {k: v for k, v in page.items() if k != "context"} == {
        "type": "page",
        "userId": "12345",
        "integrations": {"All": True},
        "name": "Pizza",
        "category": "Food",
        "properties": {"url": "https://dominos.com"},
    }
    assert screen["type"] == "screen"
    assert screen["anonymousId"] == "a-1"
    assert screen["name"] == "Home"
    assert "userId" not in screen
    assert group["groupId"] == "1"
    assert group["traits"] == {"name": "Company"}
    assert group["type"] == "group"
    assert alias["previousId"] == "old_id"
    assert alias["userId"] == "new_id"
    assert alias["type"] == "alias"
    assert docs["anonymousId"] == "a-2"
    assert docs["event"] == "Docs Form"
    assert docs["properties"] == {"n": 1}
    for e in events:
        assert e["context"]["library"] == library


def test_normalisation_is_identical_across_calls(spool_dir: Path) -> None:
    """The same arguments give byte-identical properties every time (dict and non-dict mappings alike)."""
    from types import MappingProxyType

    props = {"d": decimal.Decimal("1.10"), "t": (1, 2), "s": frozenset({3, 1}), "f": float("nan"), "b": b"x"}
    em = Emitter(spool_dir)
    em.track(user_id="u", event="e", properties=props)
    em.track(user_id="u", event="e", properties=MappingProxyType(props))
    em.page(user_id="u", properties=props)
    out: list[bytes] = []
    scan_pending(spool_dir, on_event=out.append)
    fragments = [raw[raw.index(b'"properties":') :].rstrip(b"}") for raw in out]
    assert len(set(fragments)) == 1
    assert orjson.loads(out[0])["properties"] == {"d": 1.1, "t": [1, 2], "s": [1, 3], "f": None, "b": "x"}


def test_a_refused_first_call_does_not_even_create_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    emitter = Emitter(spool)
    with pytest.raises(InvalidEventError):
        emitter.track(user_id="u", event="Big", properties={"blob": "x" * 4_100_000})
    with pytest.raises(InvalidEventError):
        emitter.page(user_id="u", name="p" + "\x02" * 990_000)
    assert not spool.exists()
    assert emitter.track(user_id="u", event="Fine") is not None
    assert spool.exists()
