"""Call validation, value normalisation and the compact spool record.

How this works
--------------
Every ``emit.*`` call is checked here, in the caller's thread, and turned into a *record*: a short list
that ``msgpack`` packs in well under a microsecond. Anything the data plane would refuse, or would make
it refuse the whole batch (see WIRE.md), is refused here with :class:`InvalidEventError` naming the field,
before a byte is written.

The free-form values (``properties``, ``traits``, ``context``, ``integrations``) are normalised and
encoded to JSON once, here, by orjson, and stored in the record as JSON bytes. orjson checks in C
what the gateway needs (string keys, 64-bit integers, valid UTF-8, NaN and ±Inf as ``null``) and the
hook below normalises the Python types it does not know. The sender splices those bytes into the
request unchanged, so a value is converted exactly once and the same way every time. Only when orjson
refuses a value does the slow path walk it again to name the exact field (``properties.cart[2].sku``).

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
import unicodedata
import uuid
from collections.abc import Mapping
from typing import Any, Final

import orjson

from .errors import InvalidEventError

KIND_TRACK: Final = 1
KIND_IDENTIFY: Final = 2
KIND_PAGE: Final = 3
KIND_SCREEN: Final = 4
KIND_GROUP: Final = 5
KIND_ALIAS: Final = 6
KIND_NAMES: Final = {
    KIND_TRACK: "track",
    KIND_IDENTIFY: "identify",
    KIND_PAGE: "page",
    KIND_SCREEN: "screen",
    KIND_GROUP: "group",
    KIND_ALIAS: "alias",
}

# Record positions.
R_KIND, R_CALL_NS, R_USER_ID, R_ANON_ID, R_MESSAGE_ID, R_TIMESTAMP, R_CONTEXT, R_INTEGRATIONS = range(8)
R_FIELDS: Final = 8

_JSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_SERIALIZE_NUMPY
)
_UTC = _dt.timezone.utc
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_INVISIBLE_CATEGORIES: Final = frozenset(("Cc", "Cf", "Zs", "Zl", "Zp"))
_INT_MIN: Final = -(2**63)
_UINT_MAX: Final = 2**64 - 1


class _Refused(TypeError):
    """Raised inside the orjson hook; caught and turned into InvalidEventError with a path."""


def iso_utc_ms(dt: _dt.datetime) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z``; a naive datetime is taken as UTC."""
    if dt.utcoffset() is not None:
        dt = dt.astimezone(_UTC)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
        f"{dt.second:02d}.{dt.microsecond // 1000:03d}Z"
    )


def _default(obj: Any) -> Any:
    """orjson's hook for the types it does not encode itself. Must be deterministic."""
    if isinstance(obj, _dt.datetime):
        try:
            return iso_utc_ms(obj)
        except OverflowError:
            raise _Refused("datetime outside the range a UTC timestamp can represent") from None
    if isinstance(obj, _dt.date):
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal):
        if not obj.is_finite():
            return None
        if not math.isfinite(float(obj)):
            # The gateway parses numbers as doubles: 1E+400 would make it refuse the whole batch.
            raise _Refused(f"Decimal {obj} is beyond the range of a JSON number (a double)")
        return orjson.Fragment(str(obj).encode())  # exact: no trip through float
    if isinstance(obj, (bytes, bytearray, memoryview)):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused("bytes that are not valid UTF-8") from None
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)  # a set's iteration order varies between processes
        except TypeError:
            # Mixed types: order by each element's own encoding, which is the same in every process.
            return sorted(obj, key=lambda v: (type(v).__name__, _encode_key(v)))
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return dict(obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
        return obj.tolist()  # arrays orjson does not take natively (non-contiguous, object dtype...)
    raise _Refused(f"cannot encode a value of type {type(obj).__name__}")


def _encode_key(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_default, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError:
        return repr(value).encode()


def encode_json_field(field: str, value: Any) -> bytes | None:
    """A mapping argument as JSON bytes, or None when absent. Refuses what cannot be sent."""
    if value is None:
        return None
    if type(value) is not dict and not isinstance(value, Mapping):
        raise InvalidEventError(field, f"must be a mapping, not {type(value).__name__}")
    try:
        return orjson.dumps(value, default=_default, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise _explain(field, value, exc) from None


def _explain(field: str, value: Any, exc: Exception) -> InvalidEventError:
    found = _find_refused(value, field, 0)
    if found is not None:
        return InvalidEventError(*found)
    cause = exc.__cause__
    return InvalidEventError(field, str(cause) if cause is not None else str(exc))


def _find_refused(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    """Walk ``value`` by the same rules as the fast path and name the first refused part."""
    if depth > 250:
        return (path, "nested too deeply (more than 250 levels)")
    if value is None or isinstance(value, (bool, float)):
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return (path, "string is not valid UTF-8 (lone surrogate)")
        return None
    if isinstance(value, int) and not isinstance(value, enum.Enum):
        if _INT_MIN <= value <= _UINT_MAX:
            return None
        try:
            shown = str(value)
        except ValueError:  # more digits than Python will print
            shown = "with thousands of digits"
        return (path, f"integer {shown} is outside the 64-bit range")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return (path, f"mapping key {key!r} is not a str")
            found = _find_refused(item, f"{path}.{key}", depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _find_refused(item, f"{path}[{i}]", depth + 1)
            if found is not None:
                return found
        return None
    try:
        converted = _default(value)
    except _Refused as exc:
        return (path, str(exc))
    if converted is value or isinstance(converted, orjson.Fragment):
        return None
    return _find_refused(converted, path, depth + 1)


def is_blank(text: str) -> bool:
    """True if ``text`` has nothing but whitespace and invisible characters (the gateway's "blank")."""
    if text and "!" <= text[0] <= "~":
        return False
    return all(ch.isspace() or unicodedata.category(ch) in _INVISIBLE_CATEGORIES for ch in text)


def check_id(field: str, value: object) -> str | None:
    """An id as a non-blank str, or None if absent. ints are accepted and turned into str."""
    if value is None:
        return None
    if isinstance(value, str):
        text = str(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            text = str(value)
        except ValueError:  # more digits than Python will print
            raise InvalidEventError(field, "integer id is too large") from None
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


def check_required_str(field: str, value: object) -> str:
    if value is None:
        raise InvalidEventError(field, "is required")
    if not isinstance(value, str):
        if field in ("group_id", "previous_id") and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = str(value)
            except ValueError:  # more digits than Python will print
                raise InvalidEventError(field, "integer id is too large") from None
        else:
            raise InvalidEventError(field, f"must be a str, not {type(value).__name__}")
    if is_blank(value):
        raise InvalidEventError(field, "must not be empty or blank")
    return value


def check_optional_str(field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEventError(field, f"must be a str, not {type(value).__name__}")
    return value


def check_message_id(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidEventError("message_id", f"must be a str, not {type(value).__name__}")
    if is_blank(value):
        raise InvalidEventError("message_id", "must not be empty or blank")
    return value


def check_timestamp(value: object) -> int | str | None:
    """The caller's event time: integer ns since the epoch, or an ISO-8601 string kept verbatim."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        # Naive, or with a tzinfo that gives no offset: taken as UTC, as documented.
        dt = value if value.utcoffset() is not None else value.replace(tzinfo=_UTC)
        try:
            delta = dt - _EPOCH
        except OverflowError:
            raise InvalidEventError("timestamp", "outside the range a UTC timestamp can represent") from None
        ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
        if _INT_MIN <= ns < 2**63:
            return ns
        # Beyond 1677-2262 nanoseconds overflow 64 bits: keep the ISO string instead (rare path).
        try:
            return iso_utc_ms(dt)
        except OverflowError:
            raise InvalidEventError("timestamp", "outside the range a UTC timestamp can represent") from None
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEventError("timestamp", f"{value!r} is not an ISO-8601 date-time") from None
        if parsed.tzinfo is None and not value.endswith("Z"):
            # The server keeps the string verbatim: without an offset its meaning is ambiguous.
            raise InvalidEventError("timestamp", f"{value!r} has no UTC offset (add 'Z' or '+00:00')")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEventError("timestamp", "must be a datetime or an ISO-8601 string")
    raise InvalidEventError(
        "timestamp", f"must be a datetime or an ISO-8601 string, not {type(value).__name__}"
    )


# The keys of the RudderStack docs' single-mapping form (camelCase) and their keyword names.
_CAMEL_TO_SNAKE: Final = {
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "messageId": "message_id",
    "groupId": "group_id",
    "previousId": "previous_id",
}
_COMMON_KEYS: Final = frozenset(
    ("user_id", "anonymous_id", "context", "integrations", "timestamp", "message_id")
)
KEYWORDS: Final = {
    "track": _COMMON_KEYS | {"event", "properties"},
    "identify": _COMMON_KEYS | {"traits"},
    "page": _COMMON_KEYS | {"name", "category", "properties"},
    "screen": _COMMON_KEYS | {"name", "category", "properties"},
    "group": _COMMON_KEYS | {"group_id", "traits"},
    "alias": _COMMON_KEYS | {"previous_id"},
}


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
        name = _CAMEL_TO_SNAKE.get(key, key)
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


_FIELD_NAMES: Final = {
    KIND_TRACK: ("event", "properties"),
    KIND_IDENTIFY: ("traits",),
    KIND_PAGE: ("name", "category", "properties"),
    KIND_SCREEN: ("name", "category", "properties"),
    KIND_GROUP: ("group_id", "traits"),
    KIND_ALIAS: ("previous_id",),
}
_COMMON_NAMES: Final = (
    "type", "timestamp", "user_id", "anonymous_id", "message_id", "timestamp", "context",
    "integrations",
)  # fmt: skip


def field_names(kind: int) -> tuple[str, ...]:
    """The argument name at each position of a record of this kind."""
    return _COMMON_NAMES + _FIELD_NAMES.get(kind, ())
