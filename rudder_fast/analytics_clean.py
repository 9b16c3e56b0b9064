"""rudder-sdk-python's leniency with values, on rudder_fast's terms: ``rudder_fast.analytics``'s slow path.

How this works
--------------
The SDK's ``clean`` walks every event: a value it cannot encode (a ``timedelta``, a ``time``, an arbitrary
object: anything that is not a str, number, bool, date, datetime, Decimal, Enum, bytes, list, tuple, set
or dict) is deleted from the dict that holds it, with a log line; a list, tuple or set holding one fails
as a whole, so its own dict entry is deleted. The emitter instead refuses such a value
(:class:`~rudder_fast.InvalidEventError`). :func:`lenient_retry` runs only after that refusal, so the
common call pays nothing for it: it walks the free-form arguments as the SDK does, deletes what the SDK
would have deleted, turns dict keys that are ints, floats, bools or None into the text ``json.dumps``
gives them (the SDK sends those), and makes the call once more. What the emitter refuses and the SDK
did not delete (an integer beyond 64 bits, a lone surrogate, a Decimal beyond a double, a tuple as a
key...) raises :class:`~rudder_fast.errors.InvalidEventAssertionError`, naming the value's path.

Values the emitter encodes and the SDK deletes (UUID, a Mapping that is not a dict, numpy arrays) are
kept, as rudder_fast normalises them for every call.

Deletions are counted per process (:func:`stats`, reset in a forked child) and logged at most once per
``config.WARNING_INTERVAL_S``, naming the fields.
"""

from __future__ import annotations

import datetime as _dt
import enum
import logging
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

from . import config
from . import jsonvalue as _jsonvalue
from .errors import InvalidEventAssertionError, InvalidEventError

log = logging.getLogger("rudder_fast")

FREE_FORM: Final = ("properties", "traits", "context", "integrations")
_MAX_DEPTH: Final = 250  # deeper is refused by the emitter anyway, naming the path
# What the SDK's ``clean`` passes through (a Decimal as a float, bytes decoded): a value of these types
# that the emitter refuses was sent broken, or raised, there; never deleted.
_SDK_KEEPS: Final = (Decimal, str, bool, numbers.Number, _dt.datetime, _dt.date, type(None))


class _Unencodable(Exception):
    """A value the SDK's ``clean`` deletes: raised up to the mapping entry that holds it."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


class _Cleaning:
    """What one walk changed."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str]] = []  # (the deleted entry's path, the unencodable type)
        self.keys_converted = False


def lenient_retry(
    call: Callable[..., str | None], kind: str, refused: InvalidEventError, kwargs: dict[str, Any]
) -> str | None:
    """After the emitter refused ``call(**kwargs)``: apply the SDK's leniency and call once more, or raise.

    Returns what the call returns (the messageId, or None if the spool dropped the event).
    """
    cleaning = _Cleaning()
    for name in FREE_FORM:
        value = kwargs.get(name)
        if isinstance(value, Mapping):  # a non-mapping is the caller's mistake: the emitter said so
            kwargs[name] = _clean_mapping(value, name, cleaning, 0)
    changed = bool(cleaning.deleted) or cleaning.keys_converted
    if refused.field == "message_id" and isinstance(kwargs.get("message_id"), str):
        # The SDK sends a blank messageId, which the gateway replaces with a random one on every
        # attempt: a generated one is as good, and stays the same across resends.
        kwargs["message_id"] = None
        changed = True
    if not changed:
        raise InvalidEventAssertionError(refused.field, refused.reason) from None
    try:
        mid = call(**kwargs)
    except InvalidEventError as again:
        raise InvalidEventAssertionError(again.field, again.reason) from None
    if cleaning.deleted:
        _deletions.record(kind, cleaning.deleted)
    return mid


def _clean_mapping(mapping: Mapping[Any, Any], path: str, cleaning: _Cleaning, depth: int) -> dict[str, Any]:
    """A copy of ``mapping`` without the entries the SDK's ``_clean_dict`` deletes, keys as JSON text."""
    out: dict[str, Any] = {}
    for key, item in mapping.items():
        if type(key) is not str:
            key = json_key(key, path)
            cleaning.keys_converted = True
        where = f"{path}.{key}"
        try:
            out[key] = _clean_value(item, where, cleaning, depth + 1)
        except _Unencodable as gone:
            cleaning.deleted.append((where, gone.type_name))
    return out


def _clean_value(item: Any, path: str, cleaning: _Cleaning, depth: int) -> Any:
    """``item`` as the emitter will take it, or :class:`_Unencodable` where the SDK's ``clean`` fails."""
    if depth > _MAX_DEPTH:
        return item
    if isinstance(item, Mapping):
        return _clean_mapping(item, path, cleaning, depth)
    if isinstance(item, (list, tuple)):
        return [_clean_value(x, f"{path}[{i}]", cleaning, depth + 1) for i, x in enumerate(item)]
    if isinstance(item, (set, frozenset)):
        for x in item:  # hashable elements: checked, and the set kept (the emitter sorts it)
            _clean_value(x, f"{path}[]", cleaning, depth + 1)
        return item
    reason = _refusal(item)
    if reason is None:
        return item
    if isinstance(item, enum.Enum):
        return _clean_value(item.value, path, cleaning, depth)  # the SDK cleans an Enum's value
    if isinstance(item, _SDK_KEEPS) or hasattr(item, "decode"):
        raise InvalidEventAssertionError(path, reason)
    raise _Unencodable(type(item).__name__)


def _refusal(value: Any) -> str | None:
    """Why the emitter refuses this one value, or None if it takes it."""
    try:
        _jsonvalue.encode_json_field("value", {"value": value})
    except InvalidEventError as exc:
        return exc.reason
    return None


def json_key(key: Any, path: str) -> str:
    """A non-str dict key as ``json.dumps`` (the SDK's encoder) writes it; refused where it raises."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        if math.isnan(key):
            return "NaN"
        if key in (float("inf"), float("-inf")):
            return "Infinity" if key > 0 else "-Infinity"
        return float.__repr__(key)
    raise InvalidEventAssertionError(path, f"mapping key {key!r} is not a str, int, float, bool or None")


class _Deletions:
    """This process's count of values deleted the SDK's way, and a log line at most once per interval."""

    def __init__(self) -> None:
        # Re-entrant: a signal handler that tracks a bad value while this thread counts must not hang.
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.values = 0
        self.events = 0
        self.last_field: str | None = None
        self._next_log = 0.0

    def after_fork_in_child(self) -> None:
        self._lock = threading.RLock()
        self._reset()

    def record(self, kind: str, deleted: list[tuple[str, str]]) -> None:
        with self._lock:
            self.values += len(deleted)
            self.events += 1
            self.last_field = deleted[-1][0]
            now = _monotonic()
            if now < self._next_log:
                return
            self._next_log = now + config.WARNING_INTERVAL_S
            total = self.values
        named = ", ".join(f"{path} ({type_name})" for path, type_name in deleted[:5])
        if len(deleted) > 5:
            named += f" and {len(deleted) - 5} more"
        # Outside the lock: a logging handler may itself make a call.
        log.warning(
            "rudder_fast.analytics: %s() deleted %s from its event, as rudder-sdk-python deletes values "
            "it cannot encode; %d deleted in this process so far, counted in rudder_fast.analytics.stats() "
            "(this message: at most once every %d s)",
            kind, named, total, config.WARNING_INTERVAL_S,
        )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "deleted_values": self.values,
                "cleaned_events": self.events,
                "last_deleted": self.last_field,
            }


_monotonic = time.monotonic
_deletions: Final = _Deletions()
os.register_at_fork(after_in_child=_deletions.after_fork_in_child)


def stats() -> dict[str, Any]:
    """This process's counts (since it started, or forked) of values deleted the SDK's way.

    ``deleted_values``: values deleted from events; ``cleaned_events``: events written (or checked,
    with ``send=False``) after such a deletion; ``last_deleted``: the path of the last value deleted
    (``properties.wait``). The emitter's
    own counts (accepted, dropped) are in ``rudder_fast.emit.stats()``.
    """
    return _deletions.snapshot()
