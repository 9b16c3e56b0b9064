"""Call validation and value normalisation (``rudder_fast.events``): pure, no I/O, no clock.

The call-level behaviour of the Emitter (nothing written for a refused call, messageId form) is in
tests/io/test_emit_validation.py; here the same rules are checked on the functions it is built from.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rudder_fast import InvalidEventError
from rudder_fast.events import (
    KEYWORDS,
    KIND_ALIAS,
    KIND_GROUP,
    KIND_IDENTIFY,
    KIND_PAGE,
    KIND_SCREEN,
    KIND_TRACK,
    build_record,
    check_id,
    check_identity,
    check_message_id,
    check_optional_str,
    check_required_str,
    check_timestamp,
    field_names,
    is_blank,
    keywords_from_mapping,
)
from rudder_fast.jsonvalue import encode_json_field, iso_utc_ms
from rudder_fast.schema import R_FIELDS

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

BLANKS = [
    "",
    " ",
    "   ",
    "\t\n\r",
    "\u200b",
    "\ufeff",
    " \u200b ",
    "\u00a0",
    "\u3000",
    "\u2028",
    "\x00",
    "\u200d",
]


def enc(value: Any, field: str = "properties") -> Any:
    """The normalised value, as the JSON the field would carry, parsed back."""
    data = encode_json_field(field, {"v": value})
    assert data is not None
    return orjson.loads(data)["v"]


def refused(value: Any, field: str = "properties") -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        encode_json_field(field, value)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{err.field}: ")
    return err


# -- ids ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blank", BLANKS)
def test_blank_ids_count_as_missing(blank: str) -> None:
    assert is_blank(blank)
    assert check_id("user_id", blank) is None
    with pytest.raises(InvalidEventError) as info:
        check_identity(blank, blank)
    assert info.value.field == "user_id"
    with pytest.raises(InvalidEventError) as info:
        check_identity(None, blank)
    assert info.value.field == "user_id"


def test_no_ids_at_all() -> None:
    with pytest.raises(InvalidEventError) as info:
        check_identity(None, None)
    assert info.value.field == "user_id"
    assert "anonymous_id" in info.value.reason


@pytest.mark.parametrize("text", ["a", " a", "\u200ba", "é", "\u4e2d", "😀", "0", "a b", "~", "!"])
def test_visible_ids_are_kept(text: str) -> None:
    assert not is_blank(text)
    assert check_id("user_id", text) == text
    assert check_identity(text, None) == (text, None)
    assert check_identity(None, text) == (None, text)


def test_one_blank_id_is_dropped_when_the_other_is_present() -> None:
    assert check_identity("u1", "  ") == ("u1", None)
    assert check_identity("\u200b", "a1") == (None, "a1")


def test_integer_ids_become_strings() -> None:
    assert check_id("user_id", 123456) == "123456"
    assert check_identity(0, None) == ("0", None)


@pytest.mark.parametrize("value", [True, 1.5, b"u1", ["u1"], {"id": 1}, object()])
def test_ids_of_other_types_are_refused(value: Any) -> None:
    with pytest.raises(InvalidEventError) as info:
        check_identity(value, "anon")
    assert info.value.field == "user_id"
    with pytest.raises(InvalidEventError) as info:
        check_identity("u1", value)
    assert info.value.field == "anonymous_id"


@PROPERTY
@given(st.text(alphabet=st.characters(categories=["Zs", "Cc", "Cf", "Zl", "Zp"]), max_size=8))
def test_whitespace_and_invisible_strings_are_blank(text: str) -> None:
    assert is_blank(text)
    assert check_id("anonymous_id", text) is None


@PROPERTY
@given(st.text(max_size=8), st.characters(categories=["L", "N", "P", "S"]), st.text(max_size=8))
def test_a_visible_character_makes_an_id_non_blank(before: str, visible: str, after: str) -> None:
    assert not is_blank(before + visible + after)


# -- required and optional strings -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event", "group_id", "previous_id"])
@pytest.mark.parametrize("value", [None, *BLANKS])
def test_required_str_missing_or_blank(field: str, value: Any) -> None:
    with pytest.raises(InvalidEventError) as info:
        check_required_str(field, value)
    assert info.value.field == field


@pytest.mark.parametrize("value", [5, 1.5, b"Item Viewed", ["e"], True])
def test_event_must_be_a_str(value: Any) -> None:
    with pytest.raises(InvalidEventError) as info:
        check_required_str("event", value)
    assert info.value.field == "event"


def test_group_and_previous_ids_accept_integers() -> None:
    assert check_required_str("group_id", 42) == "42"
    assert check_required_str("previous_id", 7) == "7"
    with pytest.raises(InvalidEventError):
        check_required_str("group_id", True)


def test_optional_str() -> None:
    assert check_optional_str("name", None) is None
    assert check_optional_str("name", "Home") == "Home"
    with pytest.raises(InvalidEventError) as info:
        check_optional_str("category", 3)
    assert info.value.field == "category"


def test_message_id() -> None:
    assert check_message_id(None) is None
    assert check_message_id("m-1") == "m-1"
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert check_message_id(u) == str(u)
    for bad in ["", " ", "\u200b", 5, b"m"]:
        with pytest.raises(InvalidEventError) as info:
            check_message_id(bad)
        assert info.value.field == "message_id"


# -- timestamps --------------------------------------------------------------------------------------


def test_timestamp_datetime_to_nanoseconds() -> None:
    aware = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    expected = (aware - EPOCH) // dt.timedelta(microseconds=1) * 1000
    assert check_timestamp(aware) == expected
    naive = dt.datetime(2024, 5, 6, 5, 8, 9, 123456)  # the same instant, naive = UTC
    assert check_timestamp(naive) == expected
    assert check_timestamp(None) is None
    assert check_timestamp(dt.datetime(1969, 12, 31, 23, 59, 59)) == -1_000_000_000


@PROPERTY
@given(st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)))
def test_timestamp_is_exact(value: dt.datetime) -> None:
    """Integer nanoseconds when they fit 64 bits (1677..2262), else the ISO string of the instant."""
    checked = check_timestamp(value)
    if isinstance(checked, int):
        assert -(2**63) <= checked < 2**64
        assert EPOCH + dt.timedelta(microseconds=checked // 1000) == value.replace(tzinfo=UTC)
    else:
        assert checked == iso_utc_ms(value)
    if dt.datetime(1678, 1, 1) <= value <= dt.datetime(2262, 1, 1):
        assert isinstance(checked, int)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime.min,  # a common "unknown" sentinel
        dt.datetime(1600, 1, 1),
        dt.datetime(2600, 1, 1),
        dt.datetime.max,
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=3))),
    ],
)
def test_accepted_timestamps_fit_in_a_record(value: dt.datetime) -> None:
    """A timestamp check_timestamp accepts must be storable in the msgpack record (int64/uint64
    nanoseconds reach only 1677..2554); otherwise it must be refused with InvalidEventError."""
    refused: InvalidEventError | None = None
    try:
        checked = check_timestamp(value)
    except InvalidEventError as err:
        refused = err
    if refused is not None:  # refused at the call: it must say which field
        assert refused.field == "timestamp"
        return
    record = build_record(
        KIND_TRACK, 0, user_id="u", anonymous_id=None, context=None, integrations=None,
        timestamp=checked, message_id=None, fields=["e", None],
    )  # fmt: skip
    assert msgpack.unpackb(msgpack.packb(record)) == record


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.123Z",
        "2024-01-01T10:00:00+02:00",
        "2024-01-01T00:00:00.123456+00:00",
    ],
)
def test_timestamp_iso_strings_are_kept_verbatim(text: str) -> None:
    assert check_timestamp(text) == text


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "",
        "2024-13-01T00:00:00Z",
        "2024-01-01T00:00:00",  # no offset: ambiguous
        "2024-01-01",
        1_700_000_000,
        1_700_000_000.5,
        math.nan,
        True,
        dt.date(2024, 1, 1),
        dt.time(12, 0),
        b"2024-01-01T00:00:00Z",
    ],
)
def test_bad_timestamps_are_refused(value: Any) -> None:
    with pytest.raises(InvalidEventError) as info:
        check_timestamp(value)
    assert info.value.field == "timestamp"


@pytest.mark.parametrize(
    "text",
    [
        "2026-W48-4T10:00:00+00:00",  # ISO 8601 week date
        "20261126T100102Z",  # ISO 8601 basic format
        "2026-11-26T10:01Z",  # no seconds
        "2026-11-26T10:01:02,5Z",  # decimal comma
        "2026-330T10:01:02Z",  # ordinal date
        "2026-11-26T10:01:02+0100",  # offset without a colon
        "2026-11-26T10:01:02+24:00",  # impossible offset
        "2026-02-30T10:01:02Z",  # no such day
    ],
)
def test_iso_8601_forms_that_are_not_rfc_3339_are_refused(text: str) -> None:
    """The data plane keeps the string verbatim and destinations read RFC 3339: other ISO 8601 forms
    would be sent unchanged and misread, so they are refused, by the same rule on every Python."""
    with pytest.raises(InvalidEventError) as info:
        check_timestamp(text)
    assert info.value.field == "timestamp"


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("2026-11-26 10:01:02+00:00", "2026-11-26T10:01:02+00:00"),  # str(datetime)'s form
        ("2026-11-26 10:01:02.345678+05:30", "2026-11-26T10:01:02.345678+05:30"),
        ("2026-11-26t10:01:02z", "2026-11-26T10:01:02Z"),
        ("2026-11-26T10:01:02.345Z", "2026-11-26T10:01:02.345Z"),  # also on Python 3.10
    ],
)
def test_rfc_3339_variants_are_written_in_the_canonical_form(text: str, sent: str) -> None:
    assert check_timestamp(text) == sent


class RaisingOffset(dt.tzinfo):
    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
        raise RuntimeError("no offset today")


class RaisingStr(str):
    def __str__(self) -> str:
        raise RuntimeError("no str today")


class RaisingInt(int):
    def __str__(self) -> str:
        raise RuntimeError("no str today")

    __repr__ = __str__


class RaisingMapping(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("no items today")

    def __iter__(self) -> Iterator[str]:
        return iter(["a"])

    def __len__(self) -> int:
        return 1


def test_a_tzinfo_whose_utcoffset_raises_is_refused_as_invalid() -> None:
    when = dt.datetime(2026, 1, 1, tzinfo=RaisingOffset())  # type: ignore[abstract]  # utcoffset is enough
    with pytest.raises(InvalidEventError) as info:
        check_timestamp(when)
    assert info.value.field == "timestamp"
    assert "utcoffset" in str(info.value)
    with pytest.raises(InvalidEventError) as info:
        encode_json_field("properties", {"when": when})
    assert info.value.field == "properties.when"


def test_str_and_int_subclasses_are_read_without_their_own_str() -> None:
    """Their characters and digits are what is sent: a __str__ that raises is never called."""
    assert check_id("user_id", RaisingStr("u-1")) == "u-1"
    assert check_id("user_id", RaisingInt(42)) == "42"
    assert check_required_str("event", RaisingStr("Clicked")) == "Clicked"
    assert check_required_str("group_id", RaisingInt(7)) == "7"
    assert check_optional_str("name", RaisingStr("Home")) == "Home"
    assert check_message_id(RaisingStr("m-1")) == "m-1"
    assert orjson.loads(encode_json_field("properties", {"s": RaisingStr("x"), "n": RaisingInt(3), "d": 1.5})
                        or b"") == {"s": "x", "n": 3, "d": 1.5}  # fmt: skip


def test_a_mapping_whose_items_raise_is_refused_as_invalid_naming_the_path() -> None:
    with pytest.raises(InvalidEventError) as info:
        encode_json_field("properties", {"cart": [1, {"x": RaisingMapping()}], "other": decimal.Decimal(1)})
    assert info.value.field == "properties.cart[1].x"
    assert "RuntimeError" in str(info.value)
    with pytest.raises(InvalidEventError) as info:
        encode_json_field("traits", RaisingMapping())
    assert info.value.field == "traits"


def test_numpy_long_double_is_a_number_and_complex_is_refused() -> None:
    np = pytest.importorskip("numpy")
    assert orjson.loads(encode_json_field("properties", {"x": np.longdouble(1.5)}) or b"") == {"x": 1.5}
    assert orjson.loads(encode_json_field("properties", {"x": np.float32(0.5)}) or b"") == {"x": 0.5}
    with pytest.raises(InvalidEventError) as info:
        encode_json_field("properties", {"z": np.clongdouble(1 + 2j)})
    assert info.value.field == "properties.z"
    assert "complex" in str(info.value)


# -- the mapping form --------------------------------------------------------------------------------


def test_mapping_form_translates_camel_case() -> None:
    message = {"userId": "u", "anonymousId": "a", "messageId": "m", "event": "E", "properties": {}}
    assert keywords_from_mapping("track", message, {}) == {
        "user_id": "u",
        "anonymous_id": "a",
        "message_id": "m",
        "event": "E",
        "properties": {},
    }
    assert keywords_from_mapping("group", {"groupId": "g", "userId": "u"}, {}) == {
        "group_id": "g",
        "user_id": "u",
    }
    assert keywords_from_mapping("alias", {"previousId": "p", "userId": "u"}, {}) == {
        "previous_id": "p",
        "user_id": "u",
    }
    # "type" matching the call is allowed (the docs' objects carry it) and dropped
    assert keywords_from_mapping("page", {"type": "page", "name": "n", "userId": "u"}, {}) == {
        "name": "n",
        "user_id": "u",
    }


@pytest.mark.parametrize(
    ("call", "message", "field"),
    [
        (
            "track",
            {"userId": "u", "event": "e", "originalTimestamp": "2024-01-01T00:00:00Z"},
            "message.originalTimestamp",
        ),
        ("track", {"userId": "u", "event": "e", "sentAt": "2024-01-01T00:00:00Z"}, "message.sentAt"),
        ("track", {"userID": "u", "event": "e"}, "message.userID"),
        ("track", {"userId": "u", "event": "e", "traits": {}}, "message.traits"),
        ("track", {"userId": "u", "event": "e", "type": "identify"}, "message.type"),
        ("identify", {"userId": "u", "event": "e"}, "message.event"),
        ("group", {"userId": "u", "groupId": "g", "properties": {}}, "message.properties"),
        ("alias", {"userId": "u", "previousId": "p", "groupId": "g"}, "message.groupId"),
        ("screen", {"userId": "u", "channel": "server"}, "message.channel"),
    ],
)
def test_mapping_form_refuses_unknown_keys(call: str, message: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        keywords_from_mapping(call, message, {})
    assert info.value.field == field


def test_mapping_form_refuses_non_str_keys_and_non_mappings() -> None:
    with pytest.raises(InvalidEventError) as info:
        keywords_from_mapping("track", {1: "x"}, {})
    assert info.value.field == "message"
    for bad in ["track", ["userId", "u"], 5]:
        with pytest.raises(InvalidEventError) as info:
            keywords_from_mapping("track", bad, {})
        assert info.value.field == "message"


def test_mapping_form_refuses_mixing_with_keywords() -> None:
    keywords = {"self": object(), "message": {}, "user_id": "u", "event": None, "timestamp": None}
    with pytest.raises(InvalidEventError) as info:
        keywords_from_mapping("track", {"userId": "u", "event": "e"}, keywords)
    assert info.value.field == "user_id"


def test_keywords_cover_the_interface() -> None:
    common = {"user_id", "anonymous_id", "context", "integrations", "timestamp", "message_id"}
    assert KEYWORDS["track"] == common | {"event", "properties"}
    assert KEYWORDS["identify"] == common | {"traits"}
    assert KEYWORDS["page"] == KEYWORDS["screen"] == common | {"name", "category", "properties"}
    assert KEYWORDS["group"] == common | {"group_id", "traits"}
    assert KEYWORDS["alias"] == common | {"previous_id"}


# -- mapping arguments: refusals naming the path -----------------------------------------------------


@pytest.mark.parametrize("field", ["properties", "traits", "context", "integrations"])
@pytest.mark.parametrize("value", [[1, 2], "a string", 5, ("k", "v"), b"{}", {"a", "b"}])
def test_mapping_argument_that_is_not_a_mapping(field: str, value: Any) -> None:
    assert refused(value, field).field == field


def test_absent_mapping_argument_is_none() -> None:
    assert encode_json_field("properties", None) is None


def test_any_mapping_type_is_accepted() -> None:
    class Custom(Mapping[str, Any]):
        def __getitem__(self, k: str) -> Any:
            return {"a": 1}[k]

        def __iter__(self) -> Iterator[str]:
            return iter(["a"])

        def __len__(self) -> int:
            return 1

    for value in [Custom(), MappingProxyType({"a": 1}), OrderedDict(a=1)]:
        assert encode_json_field("traits", value) == b'{"a":1}'
    assert encode_json_field("traits", {"m": MappingProxyType({"a": Custom()})}) == b'{"m":{"a":{"a":1}}}'


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({1: "x"}, "properties"),
        ({"a": {1: "x"}}, "properties.a"),
        ({"a": [{"b": {None: 1}}]}, "properties.a[0].b"),
        ({"a": {(1, 2): "x"}}, "properties.a"),
        ({"a": {True: "x"}}, "properties.a"),
        ({"a": {b"k": "x"}}, "properties.a"),
    ],
)
def test_non_str_key_names_the_path(value: Any, path: str) -> None:
    err = refused(value)
    assert err.field == path
    assert "key" in err.reason


def _function() -> None:
    pass


class Opaque:
    pass


@pytest.mark.parametrize(
    "bad",
    [
        object(),
        _function,
        len,
        lambda: 1,
        dt.time(12, 30),
        Opaque(),
        1 + 2j,
        Opaque,
        dt.timedelta(1),
        range(3),
    ],
)
def test_unencodable_value_names_the_path(bad: Any) -> None:
    err = refused({"a": [0, {"b": bad}]})
    assert err.field == "properties.a[1].b"
    err = refused({"x": bad}, "context")
    assert err.field == "context.x"
    err = refused({"k": (1, frozenset(), [bad])}, "traits")
    assert err.field == "traits.k[2][0]"


def _inside_itself() -> dict[str, Any]:
    d: dict[str, Any] = {"a": 1}
    d["self"] = d
    return d


def _list_inside_itself() -> dict[str, Any]:
    cart: list[Any] = [1]
    cart.append({"k": cart})
    return {"cart": cart}


def _tuple_around_a_loop() -> dict[str, Any]:
    inner: dict[str, Any] = {}
    inner["back"] = (0, inner)
    return {"x": {"y": inner}}


@pytest.mark.parametrize(
    ("make", "path", "itself"),
    [
        (_inside_itself, "properties.self", "properties"),
        (_list_inside_itself, "properties.cart[1].k", "properties.cart"),
        (_tuple_around_a_loop, "properties.x.y.back[1]", "properties.x.y"),
    ],
)
def test_a_circular_reference_is_named_as_such_where_it_loops(make: Any, path: str, itself: str) -> None:
    err = refused(make())
    assert err.field == path
    assert err.reason == f"a circular reference: it is {itself}"


def test_deep_nesting_without_a_loop_is_still_too_deep() -> None:
    deep: dict[str, Any] = {}
    level = deep
    for _ in range(300):
        level["n"] = {}
        level = level["n"]
    err = refused(deep)
    assert err.reason == "nested too deeply (more than 250 levels)"
    assert err.field == "properties" + ".n" * 250


@pytest.mark.parametrize("n", [2**64, -(2**63) - 1, 10**30, -(10**30)])
def test_integers_outside_64_bits(n: int) -> None:
    err = refused({"a": [1, {"b": n}]})
    assert err.field == "properties.a[1].b"
    assert str(n) in err.reason


@pytest.mark.parametrize("n", [2**64 - 1, -(2**63), 0, 2**63, -1])
def test_integers_inside_64_bits(n: int) -> None:
    assert encode_json_field("properties", {"n": n}) == b'{"n":%d}' % n


@pytest.mark.parametrize("raw", [b"\xff", b"\xc3\x28", b"ok\xed\xa0\x80", bytearray(b"\x80abc")])
def test_invalid_utf8_bytes(raw: bytes) -> None:
    assert refused({"a": {"b": raw}}).field == "properties.a.b"


@pytest.mark.parametrize("text", ["\ud800", "abc\udfff", "\udc00\ud800"])
def test_lone_surrogate_values(text: str) -> None:
    assert refused({"a": [text]}).field == "properties.a[0]"


def test_lone_surrogate_key_is_refused() -> None:
    err = refused({"a": {"\ud800": 1}})
    assert err.field.startswith("properties")


# -- normalisation -----------------------------------------------------------------------------------


def test_datetimes_to_iso_utc_milliseconds() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert enc(dt.datetime(2024, 5, 6, 7, 8, 9, 123999, tzinfo=plus2)) == "2024-05-06T05:08:09.123Z"
    assert enc(dt.datetime(2024, 5, 6, 7, 8, 9)) == "2024-05-06T07:08:09.000Z"  # naive = UTC
    assert enc(dt.datetime(2024, 1, 1, 0, 30, tzinfo=plus2)) == "2023-12-31T22:30:00.000Z"
    assert enc(dt.datetime(99, 1, 2, 3, 4, 5, 6000)) == "0099-01-02T03:04:05.006Z"


@PROPERTY
@given(
    st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31)),
    st.one_of(st.none(), st.integers(-23 * 60 - 59, 23 * 60 + 59)),
)
def test_datetime_normalisation_property(value: dt.datetime, offset_min: int | None) -> None:
    if offset_min is not None:
        value = value.replace(tzinfo=dt.timezone(dt.timedelta(minutes=offset_min)))
    utc = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    expected = utc.isoformat(timespec="milliseconds") + "Z"  # isoformat truncates, as it should
    assert enc(value) == expected == iso_utc_ms(value)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))),  # UTC is year 0
        dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-5))),  # UTC is year 10000
    ],
)
def test_datetime_outside_the_utc_range_is_refused_not_crashed(value: dt.datetime) -> None:
    """An aware datetime whose UTC time is outside years 1..9999 cannot be sent: InvalidEventError."""
    assert refused({"a": value}).field == "properties.a"


def test_dates() -> None:
    assert enc(dt.date(2024, 2, 29)) == "2024-02-29"
    assert enc(dt.date(5, 1, 1)) == "0005-01-01"


@pytest.mark.parametrize(
    ("value", "json"),
    [
        (decimal.Decimal("19.95"), b"19.95"),
        (decimal.Decimal("1.10"), b"1.10"),
        (decimal.Decimal("-0"), b"-0"),
        (decimal.Decimal("12345678901234567890.123456789"), b"12345678901234567890.123456789"),
        (decimal.Decimal("1E+3"), b"1E+3"),
        (decimal.Decimal("1E-7"), b"1E-7"),
        (decimal.Decimal("NaN"), b"null"),
        (decimal.Decimal("sNaN"), b"null"),
        (decimal.Decimal("Infinity"), b"null"),
        (decimal.Decimal("-Infinity"), b"null"),
    ],
)
def test_decimals_are_exact_numbers(value: decimal.Decimal, json: bytes) -> None:
    assert encode_json_field("properties", {"d": value}) == b'{"d":' + json + b"}"


@PROPERTY
@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_decimal_property(value: decimal.Decimal) -> None:
    data = encode_json_field("properties", {"d": value})
    assert data == b'{"d":' + str(value).encode() + b"}"


def test_uuids_are_strings() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert enc(u) == "12345678-1234-5678-1234-567812345678"
    assert enc([uuid.UUID(int=0)]) == ["00000000-0000-0000-0000-000000000000"]


class Color(enum.Enum):
    RED = "red"
    ONE = 1


class Level(enum.IntEnum):
    HIGH = 3


class Kind(str, enum.Enum):
    A = "a"


class Rich(enum.Enum):
    WHEN = dt.datetime(2024, 1, 1, 12, 0, 0, 123456)
    DAY = dt.date(2024, 1, 2)
    SET = frozenset({3, 1, 2})
    DEC = decimal.Decimal("1.10")
    NESTED = Color.RED
    DATA = ("x", 1)
    ID = uuid.UUID(int=1)


def test_enums_become_their_values() -> None:
    assert enc(Color.RED) == "red"
    assert enc(Color.ONE) == 1
    assert enc(Level.HIGH) == 3
    assert enc(Kind.A) == "a"


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (Rich.WHEN, "2024-01-01T12:00:00.123Z"),
        (Rich.DAY, "2024-01-02"),
        (Rich.SET, [1, 2, 3]),
        (Rich.NESTED, "red"),
        (Rich.DATA, ["x", 1]),
        (Rich.ID, "00000000-0000-0000-0000-000000000001"),
    ],
)
def test_enum_values_are_normalised_in_turn(member: Rich, expected: Any) -> None:
    assert enc(member) == expected
    assert enc({"deep": [member]}) == {"deep": [expected]}


def test_enum_decimal_value_stays_exact() -> None:
    assert encode_json_field("properties", {"d": Rich.DEC}) == b'{"d":1.10}'


def test_enum_with_an_unencodable_value_is_refused() -> None:
    class Bad(enum.Enum):
        X = dt.time(1, 2)

    assert refused({"a": [Bad.X]}).field == "properties.a[0]"


def test_bytes_are_utf8_text() -> None:
    assert enc(b"caf\xc3\xa9") == "café"
    assert enc(bytearray(b"abc")) == "abc"
    assert enc(memoryview(b"xyz")) == "xyz"
    assert enc(b"") == ""


def test_collections_become_lists() -> None:
    assert enc((1, "a", None)) == [1, "a", None]
    assert enc({3, 1, 2}) == [1, 2, 3]
    assert enc(frozenset({"b", "c", "a"})) == ["a", "b", "c"]
    assert enc([{2, 1}, (frozenset({9, 8}),)]) == [[1, 2], [[8, 9]]]
    assert enc(set()) == []


@PROPERTY
@given(st.sets(st.integers(-(2**63), 2**63)) | st.sets(st.text(max_size=5)))
def test_sets_are_sorted(value: set[Any]) -> None:
    assert enc(value) == sorted(value)
    assert enc(frozenset(value)) == sorted(value)


def _colliding_pair() -> tuple[int, tuple[int]]:
    """An int and a tuple that land in the same slot of a small set: their order is insertion order."""
    other = (1,)
    return hash(other) % 8, other


def test_equal_sets_of_unorderable_values_give_the_same_bytes() -> None:
    """Normalisation must depend on the value only: two equal sets encode identically.

    (A set's iteration order depends on insertion history and, for str/bytes/enum members, on the
    per-process hash seed; for values that cannot be sorted together the encoder falls back to it.)
    """
    a, b = _colliding_pair()
    first, second = {a, b}, {b, a}
    assert first == second
    assert encode_json_field("properties", {"s": first}) == encode_json_field("properties", {"s": second})


def test_floats_nan_and_infinities_are_null() -> None:
    assert encode_json_field("properties", {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5}) == (
        b'{"a":null,"b":null,"c":null,"d":1.5}'
    )
    assert enc([float("nan"), {"x": float("-inf")}]) == [None, {"x": None}]


def test_none_stays_null() -> None:
    assert encode_json_field("properties", {"a": None, "b": [None]}) == b'{"a":null,"b":[null]}'


def test_numpy_scalars_and_arrays() -> None:
    np = pytest.importorskip("numpy")
    assert (
        encode_json_field(
            "properties",
            {
                "i": np.int64(-5),
                "u": np.uint64(2**64 - 1),
                "i8": np.int8(7),
                "f32": np.float32(1.5),
                "f64": np.float64(2.25),
                "b": np.bool_(True),
                "s": np.str_("txt"),
            },
        )
        == b'{"i":-5,"u":18446744073709551615,"i8":7,"f32":1.5,"f64":2.25,"b":true,"s":"txt"}'
    )
    assert enc(np.array([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert enc(np.array([1.5, 2.5], dtype=np.float32)) == [1.5, 2.5]
    assert enc(np.arange(6).reshape(2, 3)[:, 1]) == [1, 4]  # not contiguous
    assert enc(np.array([1, "a", None], dtype=object)) == [1, "a", None]
    assert enc(np.array([], dtype=np.int32)) == []
    assert enc(np.array([True, False])) == [True, False]


def test_numpy_nan_and_infinities_are_null() -> None:
    np = pytest.importorskip("numpy")
    for value in [np.float64("nan"), np.float32("nan"), np.float16("inf"), np.float32("-inf")]:
        assert enc(value) is None
    assert enc(np.array([1.0, np.nan, np.inf, -np.inf])) == [1.0, None, None, None]
    assert enc(np.array([[np.nan, 1.0], [2.0, np.nan]], dtype=np.float32)[:, 0]) == [None, 2.0]
    assert enc(np.array([np.nan, 1], dtype=object)) == [None, 1]


def test_numpy_unencodable_is_refused() -> None:
    np = pytest.importorskip("numpy")
    assert refused({"a": [np.complex128(1j)]}).field == "properties.a[0]"


# -- properties over arbitrary values ----------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def _plain(value: Any) -> Any:
    """What the JSON of a plain value reads back as: NaN and ±Inf are null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@PROPERTY
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_plain_json_values_round_trip(value: dict[str, Any]) -> None:
    data = encode_json_field("properties", value)
    assert data is not None
    assert orjson.loads(data) == _plain(value)
    assert encode_json_field("properties", value) == data  # deterministic


rich_scalars = st.one_of(
    json_scalars,
    st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 1, 1)),
    st.dates(),
    st.decimals(min_value=-(10**30), max_value=10**30),  # huge exponents: see the test below
    st.uuids(),
    st.binary(max_size=8).filter(lambda b: b.decode("utf-8", "ignore").encode() == b),
    st.sampled_from([*Color, *Level, *Kind, *Rich]),
    st.frozensets(st.integers(-100, 100), max_size=4),
)
rich_values = st.recursive(
    rich_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@PROPERTY
@given(st.dictionaries(st.text(max_size=8), rich_values, max_size=6))
def test_accepted_values_encode_to_strict_json_the_same_way_every_time(value: dict[str, Any]) -> None:
    """Whatever is accepted is JSON a strict parser (orjson, as the sender and devserver use) reads back,
    without NaN or Infinity, and the same input gives identical bytes twice."""
    data = encode_json_field("properties", value)
    assert data is not None
    assert encode_json_field("properties", value) == data
    orjson.loads(data)  # raises if the bytes are not strict JSON


@pytest.mark.parametrize(
    "value", [decimal.Decimal("1E+400"), decimal.Decimal("-9.9E+308"), decimal.Decimal("1E+1000000")]
)
def test_huge_decimals_do_not_produce_json_a_strict_parser_rejects(value: decimal.Decimal) -> None:
    """A finite Decimal beyond float range is accepted, but its JSON (``1E+400``) cannot be read by
    orjson (nor by any float64 JSON decoder): either refuse it at the call or map it to null."""
    refused: InvalidEventError | None = None
    try:
        data = encode_json_field("context", {"x": value})
    except InvalidEventError as err:
        refused = err
    if refused is not None:  # refused at the call: it must say which field
        assert refused.field == "context.x"
        return
    assert data is not None
    orjson.loads(data)


# -- records -----------------------------------------------------------------------------------------


def test_build_record_layout() -> None:
    ts = dt.datetime(2024, 1, 1, tzinfo=UTC)
    record = build_record(
        KIND_GROUP,
        123,
        user_id="u",
        anonymous_id=" ",
        context={"ip": "1.2.3.4"},
        integrations={"All": False},
        timestamp=ts,
        message_id="m-1",
        fields=["g", b'{"name":"Co"}'],
    )
    assert record == [
        KIND_GROUP,
        123,
        "u",
        None,
        "m-1",
        (ts - EPOCH) // dt.timedelta(microseconds=1) * 1000,
        b'{"ip":"1.2.3.4"}',
        b'{"All":false}',
        "g",
        b'{"name":"Co"}',
    ]
    assert record[R_FIELDS:] == ["g", b'{"name":"Co"}']


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"user_id": None, "anonymous_id": None}, "user_id"),
        ({"user_id": "\ufeff", "anonymous_id": ""}, "user_id"),
        ({"context": ["a"]}, "context"),
        ({"integrations": "All"}, "integrations"),
        ({"context": {"a": {1: 2}}}, "context.a"),
        ({"integrations": {"x": object()}}, "integrations.x"),
        ({"timestamp": "not a time"}, "timestamp"),
        ({"message_id": ""}, "message_id"),
    ],
)
def test_build_record_refusals(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {
        "user_id": "u",
        "anonymous_id": None,
        "context": None,
        "integrations": None,
        "timestamp": None,
        "message_id": None,
        **kwargs,
    }
    with pytest.raises(InvalidEventError) as info:
        build_record(KIND_TRACK, 0, fields=["e", None], **args)
    assert info.value.field == field


def test_field_names_cover_every_kind() -> None:
    assert field_names(KIND_TRACK)[R_FIELDS:] == ("event", "properties")
    assert field_names(KIND_IDENTIFY)[R_FIELDS:] == ("traits",)
    assert (
        field_names(KIND_PAGE)[R_FIELDS:]
        == field_names(KIND_SCREEN)[R_FIELDS:]
        == ("name", "category", "properties")
    )
    assert field_names(KIND_GROUP)[R_FIELDS:] == ("group_id", "traits")
    assert field_names(KIND_ALIAS)[R_FIELDS:] == ("previous_id",)


@pytest.mark.parametrize(
    "text",
    ["\u3164", "\u2800", "\u115f\u1160", "\ue000", "\U0010fffd", "\U000e0fff", " \u3164 ", "\uffa0\u2800"],
    ids=["hangul-filler", "braille-blank", "hangul-choseong", "private-use", "plane-16", "unassigned",
         "spaced", "mixed"],
)  # fmt: skip
def test_ids_the_gateway_takes_for_blank_are_blank(text: str) -> None:
    """The gateway refuses a whole batch for an event whose ids are all blank by its rule (printable
    characters only, after deleting rudder-go-kit's invisible ones): the same rule refuses it here."""
    with pytest.raises(InvalidEventError) as info:
        check_identity(text, None)
    assert info.value.field == "user_id"
    assert check_id("anonymous_id", "a" + text) == "a" + text  # one visible character is enough
