"""Record → the RudderStack JSON event of docs/wire.md, exactly as the sender posts it (minus ``sentAt``).

Pure: the JSON-valued fields of a record are already-encoded JSON bytes, spliced in unchanged through
``orjson.Fragment``, so a value is converted once (at the call) and never re-parsed, except a caller's
``context``, which is merged over the library's own.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Final

import orjson

from .schema import (
    CALLS,
    R_ANON_ID,
    R_CALL_NS,
    R_CONTEXT,
    R_FIELDS,
    R_INTEGRATIONS,
    R_KIND,
    R_MESSAGE_ID,
    R_TIMESTAMP,
    R_USER_ID,
    TRAITS_IN_CONTEXT,
)

LIBRARY_NAME: Final = "rudder-fast"
_EPOCH: Final = _dt.datetime(1970, 1, 1)
_MILLIS: Final = tuple(f"{ms:03d}Z" for ms in range(1000))  # formatting ".345Z" is a table lookup
_ALL_INTEGRATIONS: Final = orjson.Fragment(b'{"All":true}')


class IsoClock:
    """Formats integer nanoseconds as ``2026-11-26T10:01:02.345Z``, caching the per-second prefix."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second: int | None = None
        self._prefix = ""

    def format_ns(self, ns: int) -> str:
        second, rest = divmod(ns, 1_000_000_000)
        if second != self._second:
            t = _EPOCH + _dt.timedelta(seconds=second)  # calendar arithmetic: no clock, no time zone
            self._prefix = (
                f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}."
            )
            self._second = second
        return self._prefix + _MILLIS[rest // 1_000_000]


class WireMapper:
    """Turns spool records into wire events, by the table of :mod:`rudder_fast.schema`. One per thread
    (it keeps a small formatting cache)."""

    def __init__(self, library_version: str) -> None:
        self.library = {"name": LIBRARY_NAME, "version": library_version}
        self._plain_context = orjson.Fragment(orjson.dumps({"library": self.library}))
        self.clock = IsoClock()
        # Per kind: the call's name, its fields as (record position, wire name, is JSON, always sent),
        # and whether its traits also go to context.traits.
        self._layouts: dict[int, tuple[str, list[tuple[int, str, bool, bool]], int]] = {}
        for call in CALLS.values():
            fields = [
                (R_FIELDS + i, f.wire, f.check == "json", f.check == "required")
                for i, f in enumerate(call.fields)
            ]
            traits = next(
                (R_FIELDS + i for i, f in enumerate(call.fields) if f.name == "traits"), -1
            ) if call.name in TRAITS_IN_CONTEXT else -1  # fmt: skip
            self._layouts[call.kind] = (call.name, fields, traits)

    def _context(self, context: bytes | None, traits: bytes | None) -> Any:
        if context is None and traits is None:
            return self._plain_context
        merged: dict[str, Any] = {"library": self.library}
        if context is not None:
            caller = orjson.loads(context)
            if isinstance(caller, dict):
                merged.update(caller)
        if traits is not None:
            merged["traits"] = orjson.Fragment(traits)
        return merged

    def event(self, record: list[Any], nonce: str, seq: int) -> dict[str, Any]:
        """The wire event of one record. Raises ValueError for a record this version cannot read."""
        layout = self._layouts.get(record[R_KIND])
        if layout is None or len(record) < R_FIELDS:
            raise ValueError(f"unknown record kind {record[R_KIND]!r}")
        name, fields, traits_at = layout
        message_id = record[R_MESSAGE_ID]
        out: dict[str, Any] = {
            "type": name,
            "messageId": message_id if message_id is not None else f"{nonce}-{seq}",
        }
        if record[R_USER_ID] is not None:
            out["userId"] = record[R_USER_ID]
        if record[R_ANON_ID] is not None:
            out["anonymousId"] = record[R_ANON_ID]
        out["channel"] = "server"
        out["context"] = self._context(record[R_CONTEXT], record[traits_at] if traits_at >= 0 else None)
        integrations = record[R_INTEGRATIONS]
        out["integrations"] = orjson.Fragment(integrations) if integrations is not None else _ALL_INTEGRATIONS
        out["originalTimestamp"] = self.clock.format_ns(record[R_CALL_NS])
        ts = record[R_TIMESTAMP]
        if ts is not None:
            out["timestamp"] = ts if isinstance(ts, str) else self.clock.format_ns(ts)
        for position, wire, is_json, always in fields:
            value = record[position]
            if value is not None:
                out[wire] = orjson.Fragment(value) if is_json else value
            elif always:
                out[wire] = None
        return out
