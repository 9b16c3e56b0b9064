"""Call validation, value normalisation and the compact spool record.

How this works
--------------
Every ``emit.*`` call is checked here, in the caller's thread, and turned into a *record*: a short list
that ``msgpack`` packs in well under a microsecond. Anything the data plane would refuse, or would make
it refuse the whole batch (see docs/wire.md), is refused here with :class:`InvalidEventError` naming
the field, before a byte is written.

The free-form values (``properties``, ``traits``, ``context``, ``integrations``) are normalised and
encoded to JSON once, here, by orjson, and stored in the record as JSON bytes. orjson checks in C
what the gateway needs (string keys, 64-bit integers, valid UTF-8, NaN and ±Inf as ``null``). The
Python types it does not know (Decimal, datetime, set, Mapping, numpy...) never reach it through a
``default`` hook: a hook runs Python code in the middle of orjson's walk, while it holds borrowed
references into the caller's containers, and another thread (or the hook itself) changing them then
crashes the process. Instead, when orjson refuses a value, :func:`snapshot` makes a private, normalised
copy in Python and orjson encodes that; the same walk names the exact field it refuses
(``properties.cart[2].sku``). The sender splices the JSON bytes into the request unchanged, so a value
is converted exactly once and the same way every time.

Record layout (a msgpack array; positions, not keys, to keep it small and fast)::

    [kind, call_ns, user_id, anonymous_id, message_id, timestamp, context, integrations, *fields]

``call_ns`` is ``time.time_ns()`` at the call (the sender formats ``originalTimestamp``), ``timestamp`` is
the caller's own timestamp (integer nanoseconds, or an ISO-8601 string kept verbatim) or None, and the
per-kind fields are::

    track     event, properties
    identify  traits
    page      name, category, properties
    screen    name, category, properties
    group     group_id, traits
    alias     previous_id

JSON-valued fields are ``bytes`` (or None when absent). This module is pure: the clock value is passed
in by the caller.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

import orjson

from .errors import InvalidEventError
from .schema import (
    CALLS,
    WIRE_TO_KEYWORD,
    Call,
    Field,
    record_names,
)

KIND_TRACK: Final = CALLS["track"].kind
KIND_IDENTIFY: Final = CALLS["identify"].kind
KIND_PAGE: Final = CALLS["page"].kind
KIND_SCREEN: Final = CALLS["screen"].kind
KIND_GROUP: Final = CALLS["group"].kind
KIND_ALIAS: Final = CALLS["alias"].kind
KIND_NAMES: Final = {call.kind: call.name for call in CALLS.values()}

# orjson options for the caller's own (live) values: datetimes and dataclasses are not orjson's to
# format (they go to the slow path, which normalises them as documented), and neither is numpy: with
# OPT_SERIALIZE_NUMPY, orjson's check of every type it does not know lets other threads run in the
# middle of its walk (seen on Python 3.11 and 3.13: a list of Decimals that another thread refills then
# crashes the process), so numpy values are only ever encoded one at a time, from the private copy.
_JSON_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_NUMPY_OPTIONS: Final = _JSON_OPTIONS | orjson.OPT_SERIALIZE_NUMPY
_UTC = _dt.timezone.utc
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
# rudder-go-kit sanitize/sanitize.go ``invisibleRunes``: the gateway deletes these from ids before its
# blank test, even the printable ones (Hangul fillers, the braille blank, ...).
GATEWAY_INVISIBLE: Final = frozenset(
    "\u0000\u0009\u00a0\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b\u200c\u200d\u200e\u200f"
    "\u202f\u205f\u2060\u2061\u2062\u2063\u2064\u206a\u206b\u206c\u206d\u206e\u206f"
    "\u3000\u2800\u3164\ufeff\uffa0"
)
_INT_MIN: Final = -(2**63)
_UINT_MAX: Final = 2**64 - 1


MAX_DEPTH: Final = 250  # orjson's own limit is 254 levels


def iso_utc_ms(dt: _dt.datetime) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z``; a naive datetime is taken as UTC."""
    if dt.utcoffset() is not None:
        dt = dt.astimezone(_UTC)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
        f"{dt.second:02d}.{dt.microsecond // 1000:03d}Z"
    )


def encode_json_field(field: str, value: Any) -> bytes | None:
    """A mapping argument as JSON bytes, or None when absent. Refuses what cannot be sent.

    The fast path is orjson alone, with no ``default`` hook: for the types it encodes natively it runs
    in C, holding the GIL from start to end, so no other thread can change the containers under it.
    Only when it refuses a value does :func:`snapshot` normalise a private copy in Python, which is
    then encoded, again without a hook. (With a hook, orjson runs Python code while it holds borrowed
    references into the caller's lists and dicts: another thread, or the hook itself, changing them
    then crashes the process.)"""
    if value is None:
        return None
    if type(value) is not dict and not isinstance(value, Mapping):
        raise InvalidEventError(field, f"must be a mapping, not {type(value).__name__}")
    try:
        return orjson.dumps(value, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError:
        pass
    return encode_snapshot(field, value)


def encode_snapshot(field: str, value: Any) -> bytes:
    """The slow path of :func:`encode_json_field`: a private, normalised copy, encoded."""
    private = snapshot(value, field)
    try:
        return orjson.dumps(private, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError as exc:  # not expected: snapshot() refuses what orjson would
        raise InvalidEventError(field, str(exc)) from None


def snapshot(value: Any, field: str) -> Any:
    """A private copy of ``value`` made only of what orjson encodes without running Python code (exact
    dict, list, str, int, float, bool, None, and ``orjson.Fragment``), with every other type normalised
    as documented; raises InvalidEventError naming the path of the first refused part
    (``properties.cart[2].sku``).

    Containers are copied first, in one C call each (``list.copy``, ``dict.items``), so another
    thread changing them meanwhile cannot disturb the walk. Types orjson encodes natively come out
    exactly as orjson writes them, so a value reads the same whichever path encoded it."""
    try:
        return _copy(value, 0)
    except _Refusal as refusal:
        parts = refusal.parts[::-1]  # outermost first
        loop = _loop(refusal.containers[::-1])
        if loop is not None:  # a container inside itself: say so, not "nested too deeply" with a long path
            outer, inner = loop
            raise InvalidEventError(
                field + "".join(parts[:inner]), f"a circular reference: it is {field}{''.join(parts[:outer])}"
            ) from None
        raise InvalidEventError(field + "".join(parts), refusal.reason) from None


def _loop(containers: list[int]) -> tuple[int, int] | None:
    """The first container met again on the path (``containers``: their ids, outermost first, all alive
    at once): (the depth where it was first met, the depth where it is met again), or None."""
    seen: dict[int, int] = {}
    for depth, ident in enumerate(containers):
        if ident in seen:
            return seen[ident], depth
        seen[ident] = depth
    return None


class _Refusal(Exception):
    """A part of a value that cannot be sent; ``parts`` collects its path (innermost first) as the
    refusal travels up, so the common case builds no path strings at all, and ``containers`` the ids of
    the containers along it (to tell a circular reference from deep nesting)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.parts: list[str] = []
        self.containers: list[int] = []


def _copy(value: Any, depth: int) -> Any:  # noqa: C901 - one branch per kind of value, orjson's order
    t = type(value)
    if value is None or t is bool or t is float:
        return value
    if t is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refusal("string is not valid UTF-8 (lone surrogate)") from None
        return value
    if t is int:
        if _INT_MIN <= value <= _UINT_MAX:
            return value
        try:
            shown = str(value)
        except ValueError:  # more digits than Python will print
            shown = "with thousands of digits"
        raise _Refusal(f"integer {shown} is outside the 64-bit range")
    if depth >= MAX_DEPTH:
        raise _Refusal(f"nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(value, dict):  # dict and its subclasses: their own items, as orjson reads them
        out = {}
        for key, item in list(dict.items(value)):
            if type(key) is not str:
                if not isinstance(key, str):
                    raise _Refusal(f"mapping key {key!r} is not a str")
                key = str.__str__(key)
            try:
                out[key] = _copy(item, depth + 1)
            except _Refusal as refusal:
                refusal.parts.append(f".{key}")
                refusal.containers.append(id(value))
                raise
        return out
    if isinstance(value, (list, tuple)):
        items = list.copy(value) if isinstance(value, list) else list(tuple.__getitem__(value, slice(None)))
        for i, item in enumerate(items):
            try:
                items[i] = _copy(item, depth + 1)
            except _Refusal as refusal:
                refusal.parts.append(f"[{i}]")
                refusal.containers.append(id(value))
                raise
        return items
    try:
        converted = _normalise(value)
    except _Refusal:
        raise
    except Exception as exc:  # noqa: BLE001 - the value's own code raised (a Mapping, a tzinfo, an Enum...)
        raise _Refusal(f"reading a {t.__name__} raised {type(exc).__name__}: {exc}") from None
    if type(converted) is orjson.Fragment:
        return converted
    return _copy(converted, depth + 1)


def _normalise(obj: Any) -> Any:  # noqa: C901 - one branch per supported type, most common first
    """What one value of a type other than the plain JSON ones stands for (normalised again by the
    caller), or an ``orjson.Fragment``. Deterministic: the same in every process."""
    if isinstance(obj, int):  # before Enum: an IntEnum is an int, as orjson writes it
        return int.__int__(obj)
    if isinstance(obj, str):  # a StrEnum, numpy.str_: the characters themselves, never __str__
        return str.__str__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, _dt.datetime):
        try:
            return iso_utc_ms(obj)
        except OverflowError:
            raise _Refusal("datetime outside the range of a UTC timestamp") from None
    if isinstance(obj, _dt.date):
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal):
        if not obj.is_finite():
            return None
        if not math.isfinite(float(obj)):
            # The gateway parses numbers as doubles: 1E+400 would make it refuse the whole batch.
            raise _Refusal(f"Decimal {obj} is beyond the range of a JSON number (a double)")
        return orjson.Fragment(str(obj).encode())  # exact: no trip through float
    if isinstance(obj, uuid.UUID):
        return str(uuid.UUID(int=obj.int))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            raise _Refusal("bytes that are not valid UTF-8") from None
    if isinstance(obj, (set, frozenset)):
        items = list(obj)
        try:
            return sorted(items)  # a set's iteration order varies between processes
        except TypeError:
            # Mixed types: order by each element's own encoding, which is the same in every process.
            return sorted(items, key=lambda v: (type(v).__name__, _sort_key(v)))
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, orjson.Fragment):
        return obj
    if type(obj).__module__ == "numpy":
        return _numpy(obj)
    raise _Refusal(f"cannot encode a value of type {type(obj).__name__}")


def _numpy(obj: Any) -> Any:
    """A numpy scalar or array (numpy is never imported here): orjson's own encoding when it has one,
    else the Python values it stands for."""
    try:
        return orjson.Fragment(orjson.dumps(obj, option=_NUMPY_OPTIONS))
    except orjson.JSONEncodeError:
        pass
    if not hasattr(obj, "tolist"):
        raise _Refusal(f"cannot encode a value of type {type(obj).__name__}")
    plain = obj.tolist()  # object arrays, non-contiguous arrays, longdouble...
    if type(plain) is type(obj):  # no Python equivalent: longdouble as a double; never a complex
        if getattr(getattr(obj, "dtype", None), "kind", "") == "c":
            raise _Refusal(f"cannot encode a complex number ({type(obj).__name__})")
        try:
            return float(obj)
        except (TypeError, ValueError):
            raise _Refusal(f"cannot encode a value of type {type(obj).__name__}") from None
    return plain


def _sort_key(value: Any) -> bytes:
    try:
        return orjson.dumps(_copy(value, 0), option=_JSON_OPTIONS)
    except _Refusal:
        return repr(value).encode()


def is_blank(text: str) -> bool:
    """True if the gateway takes ``text`` for a missing id (rudder-server ``gateway/handle.go``:
    ``strings.TrimSpace(sanitize.Unicode(id))`` is empty, and the whole batch is then refused): every
    character is a space, one of rudder-go-kit's invisible ones, or not printable (Go's
    ``unicode.IsPrint`` refuses the Unicode categories C and Z but the ASCII space, as Python's
    ``str.isprintable`` does: control, format, unassigned and private-use characters included)."""
    if text and "!" <= text[0] <= "~":
        return False
    return all(ch == " " or ch in GATEWAY_INVISIBLE or not ch.isprintable() for ch in text)


def check_id(field: str, value: object) -> str | None:
    """An id as a non-blank str, or None if absent. ints are accepted and turned into str."""
    if value is None:
        return None
    if isinstance(value, str):
        text = str.__str__(value)  # the characters themselves: a subclass's __str__ is never called
    elif isinstance(value, int) and not isinstance(value, bool):
        text = _int_text(field, value)
    else:
        raise InvalidEventError(field, f"must be a str, not {type(value).__name__}")
    if is_blank(text):
        return None
    return text


def check_identity(user_id: object, anonymous_id: object) -> tuple[str | None, str | None]:
    uid = check_id("user_id", user_id)
    aid = check_id("anonymous_id", anonymous_id)
    if uid is None and aid is None:
        raise InvalidEventError(
            "user_id",
            "an event needs a non-blank user_id or anonymous_id (both are missing or blank)",
        )
    return uid, aid


def _int_text(field: str, value: int) -> str:
    """An integer id as its decimal digits (``int.__repr__``: a subclass's __str__ is never called)."""
    try:
        return int.__repr__(value)
    except ValueError:  # more digits than Python will print
        raise InvalidEventError(field, "integer id is too large") from None


def check_required_str(field: str, value: object) -> str:
    if value is None:
        raise InvalidEventError(field, "is required")
    if type(value) is not str:
        if isinstance(value, str):
            value = str.__str__(value)
        elif field in ("group_id", "previous_id") and isinstance(value, int) and not isinstance(value, bool):
            value = _int_text(field, value)
        else:
            raise InvalidEventError(field, f"must be a str, not {type(value).__name__}")
    if is_blank(value):
        raise InvalidEventError(field, "must not be empty or blank")
    return value


def check_optional_str(field: str, value: object) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        if not isinstance(value, str):
            raise InvalidEventError(field, f"must be a str, not {type(value).__name__}")
        value = str.__str__(value)
    return value


def check_message_id(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(uuid.UUID(int=value.int))
    if not isinstance(value, str):
        raise InvalidEventError("message_id", f"must be a str, not {type(value).__name__}")
    value = str.__str__(value)
    if is_blank(value):
        raise InvalidEventError("message_id", "must not be empty or blank")
    return value


def check_timestamp(value: object) -> int | str | None:
    """The caller's event time: integer ns since the epoch, or an RFC 3339 string (kept as given, but
    for its separators, written ``T`` and ``Z``)."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        try:
            offset = value.utcoffset()
        except Exception as exc:  # noqa: BLE001 - a tzinfo whose utcoffset() raises anything
            raise InvalidEventError(
                "timestamp", f"its tzinfo's utcoffset() raised {type(exc).__name__}: {exc}"
            ) from None
        # Naive, or with a tzinfo that gives no offset: taken as UTC, as documented.
        dt = value if offset is not None else value.replace(tzinfo=_UTC)
        try:
            delta = dt - _EPOCH
        except OverflowError:
            raise InvalidEventError("timestamp", "outside the range a UTC timestamp can represent") from None
        except Exception as exc:  # noqa: BLE001 - a datetime subclass's own arithmetic raised
            raise InvalidEventError("timestamp", f"cannot be read: {type(exc).__name__}: {exc}") from None
        ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
        if _INT_MIN <= ns < 2**63:
            return ns
        # Beyond 1677-2262 nanoseconds overflow 64 bits: keep the ISO string instead (rare path).
        try:
            return iso_utc_ms(dt)
        except OverflowError:
            raise InvalidEventError("timestamp", "outside the range a UTC timestamp can represent") from None
    if isinstance(value, str):
        return check_rfc3339(str.__str__(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEventError("timestamp", "must be a datetime or an ISO-8601 string")
    raise InvalidEventError(
        "timestamp", f"must be a datetime or an ISO-8601 string, not {type(value).__name__}"
    )


# RFC 3339's date-time: the one ISO 8601 form every destination reads. A space or a lower-case ``t``/``z``
# (RFC 3339 allows both) is accepted and written in the canonical form.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-](\d{2}):(\d{2}))?"
)


def check_rfc3339(value: str) -> str:
    """A timestamp string, checked by one rule on every Python version: an RFC 3339 date-time with an
    offset (``2026-11-26T10:01:02.345Z``, ``2026-11-26T11:01:02+01:00``)."""
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise InvalidEventError(
            "timestamp",
            f"{value!r} is not an RFC 3339 date-time such as '2026-11-26T10:01:02.345Z' "
            f"(other ISO 8601 forms, week dates and the basic format, are not read by every destination)",
        )
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        _dt.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise InvalidEventError("timestamp", f"{value!r} is not a valid date-time: {exc}") from None
    zone = m.group(8)
    if zone is None:
        # The server keeps the string verbatim: without an offset its meaning is ambiguous.
        raise InvalidEventError("timestamp", f"{value!r} has no UTC offset (add 'Z' or '+00:00')")
    if m.group(9) is not None and (int(m.group(9)) > 23 or int(m.group(10)) > 59):
        raise InvalidEventError("timestamp", f"{value!r} has an impossible UTC offset")
    if value[10] != "T" or zone == "z":
        value = value[:10] + "T" + value[11:-1] + ("Z" if zone in "Zz" else value[-1])
    return value


KEYWORDS: Final = {name: call.keywords for name, call in CALLS.items()}


def keywords_from_mapping(call: str, message: object, keywords: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for a call made in the docs' form: ``emit.track({"userId": ...})``."""
    if not isinstance(message, Mapping):
        raise InvalidEventError("message", f"must be a mapping, not {type(message).__name__}")
    given = {k for k, v in keywords.items() if v is not None and k not in ("self", "message")}
    if given:
        raise InvalidEventError(sorted(given)[0], "pass either one mapping or keyword arguments, not both")
    allowed = KEYWORDS[call]
    result: dict[str, Any] = {}
    for key, value in message.items():
        if not isinstance(key, str):
            raise InvalidEventError("message", f"key {key!r} is not a str")
        name = WIRE_TO_KEYWORD.get(key, key)
        if name == "type" and value == call:
            continue
        if name not in allowed:
            raise InvalidEventError(f"message.{key}", f"is not a field of {call}()")
        result[name] = value
    return result


def build_record(
    kind: int,
    call_ns: int,
    *,
    user_id: object,
    anonymous_id: object,
    context: object,
    integrations: object,
    timestamp: object,
    message_id: object,
    fields: list[Any],
) -> list[Any]:
    """The common part of every record, checked; ``fields`` are the per-kind fields, already checked."""
    uid, aid = check_identity(user_id, anonymous_id)
    return [
        kind,
        call_ns,
        uid,
        aid,
        check_message_id(message_id),
        check_timestamp(timestamp),
        encode_json_field("context", context),
        encode_json_field("integrations", integrations),
        *fields,
    ]


def check_field(field: Field, value: object) -> Any:
    """One of a call's own fields, checked and encoded as the table says."""
    if field.check == "json":
        return encode_json_field(field.name, value)
    if field.check == "required":
        return check_required_str(field.name, value)
    if field.check == "text":
        return check_optional_str(field.name, value)
    raise ValueError(f"{field.name}: a common field, not a call's own")


def record(call: Call, call_ns: int, values: Mapping[str, Any]) -> list[Any]:
    """The record of ``call`` from its keyword values (missing ones are None), every field checked:
    the one builder, driven by the table, for every call but track's inlined hot path."""
    fields = [check_field(f, values.get(f.name)) for f in call.fields]
    return build_record(
        call.kind,
        call_ns,
        user_id=values.get("user_id"),
        anonymous_id=values.get("anonymous_id"),
        context=values.get("context"),
        integrations=values.get("integrations"),
        timestamp=values.get("timestamp"),
        message_id=values.get("message_id"),
        fields=fields,
    )


def field_names(kind: int) -> tuple[str, ...]:
    """The argument name at each position of a record of this kind."""
    return record_names(kind)
