"""Call validation, value normalisation and the compact spool record.

How this works
--------------
Every ``emit.*`` call is checked here, in the caller's thread, and turned into a *record*: a short list
that ``msgpack`` packs in well under a microsecond. Anything the data plane would refuse, or would make
it refuse the whole batch (see docs/wire.md), is refused here with :class:`InvalidEventError` naming
the field, before a byte is written.

The free-form values (``properties``, ``traits``, ``context``, ``integrations``) are encoded to JSON
once, at the call, and stored in the record as JSON bytes (:mod:`rudder_fast.jsonvalue`).

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
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

from .errors import InvalidEventError
from .jsonvalue import _INT_MIN, _UTC, encode_json_field, iso_utc_ms
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

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
# rudder-go-kit sanitize/sanitize.go ``invisibleRunes``: the gateway deletes these from ids before its
# blank test, even the printable ones (Hangul fillers, the braille blank, ...).
GATEWAY_INVISIBLE: Final = frozenset(
    "\u0000\u0009\u00a0\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b\u200c\u200d\u200e\u200f"
    "\u202f\u205f\u2060\u2061\u2062\u2063\u2064\u206a\u206b\u206c\u206d\u206e\u206f"
    "\u3000\u2800\u3164\ufeff\uffa0"
)


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
