"""Record → the RudderStack JSON event of docs/wire.md, exactly as the sender posts it (minus ``sentAt``).

Pure: the JSON-valued fields of a record are already-encoded JSON bytes, spliced in unchanged through
``orjson.Fragment``, so a value is converted once (at the call) and never re-parsed, except a caller's
``context``, which is merged over the library's own.

Two ways to the same bytes: :class:`WireMapper` builds an event's dict (the reference, and what
``inspect`` and ``replay`` use); :class:`StubEncoder`, the sender's hot path, assembles the encoded
event directly from the record's pieces, byte for byte what encoding the mapper's dict gives.

A run of plain tracks (see :meth:`StubEncoder._plain_tracks`), by far the most common records, is
written in C where the package's optional extension was built (``rudder_fast/_speedups.c``,
``plain_track_stubs``): it reads each record and writes its stub in one pass, 0.2 µs per benchmark event
where the Python way takes 0.9. It only takes runs it is sure of: every record a plain track, every
string one whose JSON is its bytes in quotes (no character JSON escapes, valid UTF-8), so it never
escapes a string itself; any other run takes the Python way, where orjson encodes the strings. The tests
hold the two ways to the same bytes. In Python, a run of plain tracks is read by msgspec where it can
be imported (a dependency): its decoder checks each record against the plain track's layout in C as it
reads it, which takes about a third off the run's cost (0.92-1.03 -> 0.63-0.67 µs per benchmark
event). msgpack reads every other record, and every record where msgspec is missing.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable, Sequence
from functools import cache, partial
from itertools import repeat
from operator import floordiv, itemgetter
from typing import Any, Final

import msgpack
import orjson

from . import framing
from .framing import EventRun
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
KIND_TRACK: Final = CALLS["track"].kind
_TRACK_FIELDS: Final = ("event", "properties")  # the plain track's layout (a test holds it to CALLS)
_PLAIN_LEN: Final = R_FIELDS + len(_TRACK_FIELDS)
_TRACK_HEAD: Final = b'{"type":"track","messageId":'
# The shortest run encoded a column at a time: each column costs a few microseconds per run, which a
# shorter run (a sender keeping up with its producers reads a few events at a time) does not earn back.
COLUMN_RUN: Final = 32
TEXT_CACHE: Final = 4096  # strings whose JSON StubEncoder remembers (ids, event names); then it starts over

# A plain track's record (the layout StubEncoder._plain_tracks reads): kind, call_ns, user id, anonymous
# id, no messageId, timestamp, context nor integrations, the event's name, its properties' JSON.
PlainTrack = tuple[int, int, str | None, str | None, None, None, None, None, str, bytes | None]


def _native_plain_track_stubs() -> Callable[..., list[bytes] | None] | None:
    try:
        from ._speedups import plain_track_stubs
    except ImportError:  # the optional C extension was not built: the Python way does the same
        return None
    return plain_track_stubs


# The C writer of a run of plain tracks' stubs (see the module docstring), or None where the extension is
# missing. A module attribute, so that the tests can run the Python way where the C one is built.
native_plain_track_stubs = _native_plain_track_stubs()
# The openings of a plain track's members after the messageId, in the stub's order.
_USER_KEY: Final = b',"userId":'
_ANON_KEY: Final = b',"anonymousId":'
_EVENT_KEY: Final = b',"event":'
_PROPERTIES_KEY: Final = b',"properties":'
_MEMBER_KEYS: Final = (_USER_KEY, _ANON_KEY, _EVENT_KEY, _PROPERTIES_KEY)


def speedups_built() -> bool:
    """Whether the sender's per-event loops run in C: the optional extension was built and imports."""
    return native_plain_track_stubs is not None and framing.native_take_events is not None


SPEEDUPS_MISSING: Final = (
    "the C extension rudder_fast._speedups is not built: the sender reads frames and writes events in "
    "Python, about twice its CPU per event (README: Install)"
)


@cache
def plain_track_decoder() -> Callable[[bytes], PlainTrack] | None:
    """msgspec's decoder of a plain track's record, which refuses any other; None without msgspec.
    Made on first use, by the sender: an app's processes, which only write records, never import
    msgspec."""
    try:
        import msgspec
    except ImportError:  # pragma: no cover - a dependency; msgpack alone reads every record without it
        return None
    return msgspec.msgpack.Decoder(PlainTrack).decode


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


class StubEncoder:
    """Event frames → *stubs*: each record's wire event encoded, without its closing brace (see
    :mod:`rudder_fast.batching`), byte for byte ``orjson.dumps(mapper.event(record, nonce, seq))[:-1]``.

    How: what never changes (each kind's ``type``, the keys, ``channel``, the library's context, the
    default integrations) is encoded once, here; per event, a string (an id, the event's name) costs one
    ``orjson.dumps``, a JSON field is spliced as stored, the call's time is formatted once per
    millisecond, and one ``join`` makes the stub: about a third of building the event's dict and
    encoding it. A caller's context is spliced after the library's when it cannot hold a ``library`` of
    its own; the records this does not cover (such a context, identify's traits with a caller's
    context, anything not shaped as this version writes it) take the mapper's way, and those it cannot
    read at all become None.
    """

    def __init__(self, mapper: WireMapper) -> None:
        self.mapper = mapper
        library = orjson.dumps(mapper.library)
        self._context = b',"channel":"server","context":{"library":' + library + b"}"
        self._context_open = b',"channel":"server","context":{"library":' + library + b","
        self._kinds: dict[int, tuple[bytes, tuple[tuple[int, bytes, bool, bool], ...], int]] = {}
        for kind, (name, fields, traits_at) in mapper._layouts.items():
            head = b'{"type":' + orjson.dumps(name) + b',"messageId":'
            keys = tuple(
                (pos - R_FIELDS, b"," + orjson.dumps(wire) + b":", is_json, always)
                for pos, wire, is_json, always in fields
            )
            self._kinds[kind] = (head, keys, traits_at - R_FIELDS if traits_at >= 0 else -1)
        self._ms: int | None = None  # the millisecond whose "originalTimestamp" member is in _iso
        self._iso = b""
        self._texts: dict[str, bytes] = {}  # see _text
        self.last_error = ""  # why the last record that could not be read could not
        self._user_ids: dict[Any, bytes] = {None: b""}  # see _member
        self._anon_ids: dict[Any, bytes] = {None: b""}
        self._events: dict[Any, bytes] = {None: b""}
        self._events_with_key: dict[Any, bytes] = {None: b""}  # each followed by ,"properties":
        self._tails: dict[int, bytes] = {}  # see _tail
        self._plain_tail = self._context + b',"integrations":{"All":true}'
        self._clock = IsoClock()
        self.decode_plain_track = plain_track_decoder()  # None: msgpack reads every record

    def stubs(self, run: EventRun, nonce: str) -> list[bytes | None]:
        """The stub of each event frame of ``run`` (see :meth:`FrameDecoder.take_events`), in order;
        None for a record that cannot be read."""
        generated = orjson.dumps(nonce + "-")[:-1]  # the default messageId, "<nonce>-<seq>", open
        written = self._native_plain_tracks(run, generated)
        if written is not None:
            return written  # type: ignore[return-value]  # list is invariant; no None in it
        if len(run) >= COLUMN_RUN:
            typed = self._typed_plain_tracks(run, generated)
            if typed is not None:
                return typed  # type: ignore[return-value]  # list is invariant; no None in it
        records: list[Any] | None
        try:
            records = list(map(msgpack.unpackb, run.payloads))
        except Exception:  # noqa: BLE001 - a record this version cannot read: found one by one below
            records = None
        else:
            try:
                column = (
                    self._plain_tracks(records, run.seqs, generated) if len(records) >= COLUMN_RUN else None
                )
            except Exception:  # noqa: BLE001 - a value no producer writes (an unhashable id, a time out of
                column = None  # range, ...): the run goes one by one, where each record is told apart
            if column is not None:
                return column  # type: ignore[return-value]  # list is invariant; no None in it
        return self._one_by_one(run, records, generated, nonce)

    def _native_plain_tracks(self, run: EventRun, generated: bytes) -> list[bytes] | None:
        """A run of plain tracks written in C (see the module docstring); None without the extension, or
        when the run holds anything it does not write (the Python way then takes the whole run)."""
        native = native_plain_track_stubs
        if native is None:
            return None
        try:
            return native(
                run.payloads, run.seqs, KIND_TRACK, _TRACK_HEAD + generated, _MEMBER_KEYS, self._tail_of
            )
        except (OverflowError, ValueError, MemoryError):  # a time the tail cannot format, memory: the
            return None  # Python way tells (any other error is a bug, or a broken build: it is raised)

    def _typed_plain_tracks(self, run: EventRun, generated: bytes) -> list[bytes] | None:
        """A run of plain tracks read by msgspec (see the module docstring); None without msgspec, or
        when a record of the run has another layout, or a value the columns cannot take (msgpack then
        reads the run again, and tells its records apart)."""
        decode = self.decode_plain_track
        if decode is None:
            return None
        try:
            records = list(map(decode, run.payloads))  # each a PlainTrack: only the kind is left to check
            fields = tuple(zip(*records, strict=True))
            if fields[R_KIND].count(KIND_TRACK) != len(records):
                return None
            return self._track_columns(fields, run.seqs, generated)
        except Exception:  # noqa: BLE001 - msgspec's refusals, and what _track_columns may raise
            return None

    def _one_by_one(
        self, run: EventRun, records: list[Any] | None, generated: bytes, nonce: str
    ) -> list[bytes | None]:
        out: list[bytes | None] = []
        append = out.append
        unpackb = msgpack.unpackb
        plain = self._plain_track
        for i, (seq, payload, _) in enumerate(run):
            try:
                record = records[i] if records is not None else unpackb(payload)
                stub = plain(record, generated, seq) if len(record) == _PLAIN_LEN else None
                if stub is None:
                    stub = self._assemble(record, generated, seq)
            except Exception:  # noqa: BLE001 - a record this version cannot read, in any way: told below
                stub = None
            if stub is None:
                stub = self._by_the_mapper(payload, nonce, seq)
            append(stub)
        return out

    def _plain_tracks(self, records: list[Any], seqs: Sequence[int], generated: bytes) -> list[bytes] | None:
        """A run made only of plain tracks (see :meth:`_plain_track`) as msgpack reads them, each record
        checked a field at a time, then encoded by :meth:`_track_columns`. None if any record of the
        run is not a plain track; an exception for a value no producer writes there."""
        n = len(records)
        if n == 0 or set(map(type, records)) != {list} or set(map(len, records)) != {_PLAIN_LEN}:
            return None
        fields = tuple(zip(*records, strict=True))
        kinds, call_ns, _, _, message_ids, ts, contexts, integrations, events, _ = fields
        if not (
            kinds.count(KIND_TRACK) == n
            and message_ids.count(None) == n
            and ts.count(None) == n
            and contexts.count(None) == n
            and integrations.count(None) == n
            and set(map(type, events)) == {str}
            and set(map(type, call_ns)) == {int}
        ):
            return None
        return self._track_columns(fields, seqs, generated)

    def _track_columns(
        self, fields: tuple[tuple[Any, ...], ...], seqs: Sequence[int], generated: bytes
    ) -> list[bytes]:
        """The stubs of a run of plain tracks, given as its records' fields (a tuple per field, in the
        record's order), a column at a time: each step is one C-level pass over the run (``map``,
        ``zip``, ``count``), and one ``join`` per event puts the pieces together, byte for byte what
        :meth:`_plain_track` gives. An exception for a value no producer writes there."""
        _, call_ns, user_ids, anon_ids, _, _, _, _, events, properties = fields
        n = len(call_ns)
        # The pieces of each stub, a column each: "...messageId":"<nonce>- then the seq's digits (one
        # orjson.dumps of them all, split at the commas: half the time of a b"%d" each) and ", the ids (a
        # column only where one is given), the tail (per millisecond: see _tail), the event's name (with
        # the properties' key when every event has properties), the properties.
        digits = orjson.dumps(seqs)[1:-1].split(b",")
        columns: list[Iterable[bytes]] = [repeat(_TRACK_HEAD + generated, n), digits, repeat(b'"', n)]
        if user_ids.count(None) != n:
            columns.append(self._members(self._user_ids, user_ids, _USER_KEY))
        if anon_ids.count(None) != n:
            columns.append(self._members(self._anon_ids, anon_ids, _ANON_KEY))
        columns.append(
            self._column(self._tails, tuple(map(floordiv, call_ns, repeat(1_000_000, n))), self._tail)
        )
        if properties.count(None) == 0:
            columns.append(self._members(self._events_with_key, events, _EVENT_KEY, _PROPERTIES_KEY))
        else:
            columns.append(self._members(self._events, events, _EVENT_KEY))
            columns.append([b"" if p is None else _PROPERTIES_KEY for p in properties])
            properties = tuple(b"" if p is None else p for p in properties)
        columns.append(properties)
        return list(map(b"".join, zip(*columns, strict=True)))

    @staticmethod
    def _column(
        cache: dict[Any, bytes], values: tuple[Any, ...], make: Callable[[Any], bytes]
    ) -> Sequence[bytes]:
        """Each value's piece from ``cache``, or made (and remembered) by ``make`` where it is new.
        ``values`` holds two or more."""
        try:
            found: tuple[bytes, ...] = itemgetter(*values)(cache)  # every lookup in one C call
        except KeyError:  # one at least is new: look them up one by one
            return [cache.get(value) or make(value) for value in values]
        return found

    def _members(
        self, cache: dict[Any, bytes], values: tuple[Any, ...], key: bytes, suffix: bytes = b""
    ) -> Sequence[bytes]:
        """Each value's member (see :meth:`_member`), a column at a time."""
        return self._column(cache, values, partial(self._member, cache, key, suffix=suffix))

    def _tail_of(self, ms: int) -> bytes:
        """The tail (see :meth:`_tail`) of the millisecond ``ms``, remembered or made."""
        return self._tails.get(ms) or self._tail(ms)

    def _tail(self, ms: int) -> bytes:
        """What follows the ids in a plain track: the library's context, the default integrations, and
        ``originalTimestamp`` (the millisecond ``ms``), remembered per millisecond."""
        tails = self._tails
        if len(tails) >= TEXT_CACHE:
            tails.clear()
        tail = tails[ms] = (
            self._plain_tail
            + b',"originalTimestamp":"'
            + self._clock.format_ns(ms * 1_000_000).encode()
            + b'"'
        )
        return tail

    def _plain_track(self, record: list[Any], generated: bytes, seq: int) -> bytes | None:
        """The most common record by far, a track with neither a messageId, a timestamp, a context nor
        integrations of its own: one join of pieces encoded once. None for any other record."""
        kind, call_ns, user_id, anon_id, message_id, ts, context, integrations, event, properties = record
        if not (
            kind == KIND_TRACK
            and message_id is None
            and ts is None
            and context is None
            and integrations is None
            and type(event) is str
            and type(call_ns) is int
        ):
            return None
        if call_ns // 1_000_000 != self._ms:
            self._iso = b',"originalTimestamp":"' + self._clock.format_ns(call_ns).encode() + b'"'
            self._ms = call_ns // 1_000_000
        return b"".join(
            (
                _TRACK_HEAD,
                generated,
                b'%d"' % seq,
                b""
                if user_id is None
                else self._user_ids.get(user_id) or self._member(self._user_ids, _USER_KEY, user_id),
                b""
                if anon_id is None
                else self._anon_ids.get(anon_id) or self._member(self._anon_ids, _ANON_KEY, anon_id),
                self._plain_tail,
                self._iso,
                self._events.get(event) or self._member(self._events, _EVENT_KEY, event),
                b"" if properties is None else _PROPERTIES_KEY,
                b"" if properties is None else properties,
            )
        )

    def _by_the_mapper(self, payload: bytes, nonce: str, seq: int) -> bytes | None:
        try:
            return orjson.dumps(self.mapper.event(msgpack.unpackb(payload), nonce, seq))[:-1]
        except Exception as exc:  # noqa: BLE001 - msgpack, the mapper and orjson each raise their own types
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None

    def _context_of(self, context: bytes | None, traits: bytes | None) -> bytes | None:
        """``,"channel":"server","context":{...}``, or None where the mapper must merge the two."""
        if context is None:
            if traits is None:
                return self._context
            return self._context_open + b'"traits":' + traits + b"}"
        if traits is None:
            if context[:2] == b'{"' and b'"library"' not in context:
                return self._context_open + context[1:]
            if context == b"{}":
                return self._context
        return None

    def _text(self, value: Any) -> bytes:
        """``orjson.dumps(value)``, remembered for strings: ids and event names recur."""
        encoded = orjson.dumps(value)
        if type(value) is str:
            texts = self._texts
            if len(texts) >= TEXT_CACHE:
                texts.clear()
            texts[value] = encoded
        return encoded

    def _member(self, cache: dict[Any, bytes], key: bytes, value: Any, suffix: bytes = b"") -> bytes:
        """``key`` + ``orjson.dumps(value)`` + ``suffix``, remembered for strings (ids and event names
        recur); b"" for None (an id not given), which every cache holds."""
        if value is None:
            return b""
        encoded = key + orjson.dumps(value) + suffix
        if type(value) is str:
            if len(cache) >= TEXT_CACHE:
                cache.clear()
                cache[None] = b""
            cache[value] = encoded
        return encoded

    def _assemble(self, record: list[Any], generated: bytes, seq: int) -> bytes | None:
        """Any other record: its pieces one by one, as the mapper lays them out; None where the mapper
        must build it."""
        kind, call_ns, user_id, anon_id, message_id, ts, context, integrations, *values = record
        if type(call_ns) is not int:
            return None
        if call_ns // 1_000_000 != self._ms:
            self._iso = b',"originalTimestamp":"' + self._clock.format_ns(call_ns).encode() + b'"'
            self._ms = call_ns // 1_000_000
        head, fields, traits_at = self._kinds[kind]
        texts = self._texts
        parts = [head, b'%b%d"' % (generated, seq) if message_id is None else orjson.dumps(message_id)]
        if user_id is not None:
            parts += (_USER_KEY, texts.get(user_id) or self._text(user_id))
        if anon_id is not None:
            parts += (_ANON_KEY, texts.get(anon_id) or self._text(anon_id))
        spliced = self._context_of(context, values[traits_at] if traits_at >= 0 else None)
        if spliced is None:
            return None
        parts.append(spliced)
        parts += (b',"integrations":', b'{"All":true}' if integrations is None else integrations)
        parts.append(self._iso)
        if ts is not None:
            parts += (
                b',"timestamp":',
                orjson.dumps(ts if isinstance(ts, str) else self._clock.format_ns(ts)),
            )
        for index, key, is_json, always in fields:
            value = values[index]
            if value is not None:
                parts += (key, value if is_json else texts.get(value) or self._text(value))
            elif always:
                parts += (key, b"null")
        return b"".join(parts)
