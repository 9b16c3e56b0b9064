"""Record → the RudderStack JSON event of WIRE.md, exactly as the sender posts it (minus ``sentAt``).

Pure: the JSON-valued fields of a record are already-encoded JSON bytes, spliced in unchanged through
``orjson.Fragment``, so a value is converted once (at the call) and never re-parsed, except a caller's
``context``, which is merged over the library's own.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson

from .events import (
    KIND_ALIAS,
    KIND_GROUP,
    KIND_IDENTIFY,
    KIND_NAMES,
    KIND_PAGE,
    KIND_SCREEN,
    KIND_TRACK,
)

LIBRARY_NAME: Final = "rudder-fast"
_MILLIS: Final = tuple(f"{ms:03d}Z" for ms in range(1000))  # formatting ".345Z" is a table lookup
_ALL_INTEGRATIONS: Final = orjson.Fragment(b'{"All":true}')


def message_id(nonce: str, seq: int) -> str:
    return f"{nonce}-{seq}"


class IsoClock:
    """Formats integer nanoseconds as ``2026-11-26T10:01:02.345Z``, caching the per-second prefix."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second: int | None = None
        self._prefix = ""

    def format_ns(self, ns: int) -> str:
        second, rest = divmod(ns, 1_000_000_000)
        if second != self._second:
            t = time.gmtime(second)
            self._prefix = (
                f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
            )
            self._second = second
        return self._prefix + _MILLIS[rest // 1_000_000]


class WireMapper:
    """Turns spool records into wire events. One per thread (it keeps a small formatting cache)."""

    def __init__(self, library_version: str) -> None:
        self.library = {"name": LIBRARY_NAME, "version": library_version}
        self._plain_context = orjson.Fragment(orjson.dumps({"library": self.library}))
        self.clock = IsoClock()

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
        kind = record[0]
        name = KIND_NAMES.get(kind)
        if name is None or len(record) < 8:
            raise ValueError(f"unknown record kind {kind!r}")
        out: dict[str, Any] = {
            "type": name,
            "messageId": record[4] if record[4] is not None else f"{nonce}-{seq}",
        }
        if record[2] is not None:
            out["userId"] = record[2]
        if record[3] is not None:
            out["anonymousId"] = record[3]
        out["channel"] = "server"
        traits = record[8] if kind == KIND_IDENTIFY else None
        out["context"] = self._context(record[6], traits)
        out["integrations"] = orjson.Fragment(record[7]) if record[7] is not None else _ALL_INTEGRATIONS
        out["originalTimestamp"] = self.clock.format_ns(record[1])
        ts = record[5]
        if ts is not None:
            out["timestamp"] = ts if isinstance(ts, str) else self.clock.format_ns(ts)
        if kind == KIND_TRACK:
            out["event"] = record[8]
            if record[9] is not None:
                out["properties"] = orjson.Fragment(record[9])
        elif kind == KIND_IDENTIFY:
            if record[8] is not None:
                out["traits"] = orjson.Fragment(record[8])
        elif kind in (KIND_PAGE, KIND_SCREEN):
            if record[8] is not None:
                out["name"] = record[8]
            if record[9] is not None:
                out["category"] = record[9]
            if record[10] is not None:
                out["properties"] = orjson.Fragment(record[10])
        elif kind == KIND_GROUP:
            out["groupId"] = record[8]
            if record[9] is not None:
                out["traits"] = orjson.Fragment(record[9])
        elif kind == KIND_ALIAS:
            out["previousId"] = record[8]
        return out
