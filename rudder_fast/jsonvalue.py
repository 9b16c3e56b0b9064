"""The free-form values of a call (``properties``, ``traits``, ``context``, ``integrations``) as JSON.

They are normalised and encoded to JSON once, at the call, by orjson, and stored in the record as JSON
bytes. orjson checks in C what the gateway needs (string keys, 64-bit integers, valid UTF-8, NaN and
±Inf as ``null``). The Python types it does not know (Decimal, datetime, set, Mapping, numpy...) never
reach it through a ``default`` hook: a hook runs Python code in the middle of orjson's walk, while it
holds borrowed references into the caller's containers, and another thread (or the hook itself)
changing them then crashes the process. Instead, when orjson refuses a value, :func:`snapshot` makes a
private, normalised copy in Python and orjson encodes that; the same walk names the exact field it
refuses (``properties.cart[2].sku``), and tells a container inside itself from deep nesting. The
sender splices the JSON bytes into the request unchanged, so a value is converted exactly once and the
same way every time. This module is pure.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import math
import uuid
from collections.abc import Mapping
from typing import Any, Final

import orjson

from .errors import InvalidEventError

# orjson options for the caller's own (live) values: datetimes and dataclasses are not orjson's to
# format (they go to the slow path, which normalises them as documented), and neither is numpy: with
# OPT_SERIALIZE_NUMPY, orjson's check of every type it does not know lets other threads run in the
# middle of its walk (seen on Python 3.11 and 3.13: a list of Decimals that another thread refills then
# crashes the process), so numpy values are only ever encoded one at a time, from the private copy.
_JSON_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_NUMPY_OPTIONS: Final = _JSON_OPTIONS | orjson.OPT_SERIALIZE_NUMPY
_UTC = _dt.timezone.utc
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
