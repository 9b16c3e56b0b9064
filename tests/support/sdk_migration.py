"""What the tests of ``rudder_fast.analytics`` share: the import lines a migration changes, and THE
comparison of an event rudder-sdk-python sends with the one rudder_fast sends for the same call.

:func:`assert_same_event` allows exactly the differences the README's section "Migrating from
rudder-sdk-python" lists for what is sent, each in its documented form (not merely ignored), and
requires every other field to be equal.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import rudder_fast

SDK_VERSION = "2.1.9"

# rudder_fast.analytics's line -> rudder-sdk-python's line: the only lines a migration changes.
IMPORT_LINES = {
    "import rudder_fast.analytics as rudder_analytics": "import rudderstack.analytics as rudder_analytics",
    "import rudder_fast.analytics as analytics": "import rudderstack.analytics as analytics",
    "from rudder_fast.analytics import Client": "from rudderstack.analytics.client import Client",
}

GENERATED_MESSAGE_ID = re.compile(r"^[0-9a-f]{16}-\d+$")
WIRE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
OUR_LIBRARY = {"name": "rudder-fast", "version": rudder_fast.__version__}
SDK_LIBRARY = {"name": "analytics-python", "version": SDK_VERSION}


def as_sdk_script(text: str) -> str:
    """A script written for rudder_fast.analytics, with rudder-sdk-python's import lines instead."""
    lines = text.splitlines(keepends=True)
    changed = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped in IMPORT_LINES:
            lines[i] = line.replace(stripped, IMPORT_LINES[stripped])
            changed += 1
    assert changed, "no rudder_fast.analytics import line to change"
    return "".join(lines)


def instant(text: str) -> dt.datetime:
    """A wire timestamp as an aware datetime to the millisecond (rudder_fast's precision); naive is UTC."""
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def _is_datetime_text(value: Any) -> bool:
    if not isinstance(value, str) or len(value) < 19 or value[10:11] != "T":
        return False
    try:
        instant(value)
    except ValueError:
        return False
    return True


def _same_value(ours: Any, theirs: Any, path: str, kept: Collection[str]) -> None:
    """Equal, but for datetimes written differently (same instant to the ms) and ``kept`` paths."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in ours.keys() | theirs.keys():
            where = f"{path}.{key}" if path else key
            if where in kept:
                assert key in ours, f"{where}: kept here, deleted by the SDK"
                assert key not in theirs, f"{where}: kept here, deleted by the SDK"
                continue
            assert key in ours, f"{where}: missing here ({theirs[key]!r} in the SDK's event)"
            assert key in theirs, f"{where}: extra here ({ours[key]!r}, not in the SDK's event)"
            _same_value(ours[key], theirs[key], where, kept)
        return
    if isinstance(ours, list) and isinstance(theirs, list):
        assert len(ours) == len(theirs), f"{path}: {ours!r} != {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same_value(a, b, f"{path}[{i}]", kept)
        return
    if ours != theirs and _is_datetime_text(ours) and _is_datetime_text(theirs):
        # datetime values: rudder_fast writes UTC with milliseconds and Z, the SDK isoformat().
        assert WIRE_TIME.match(ours), f"{path}: {ours!r}"
        assert instant(ours) == instant(theirs), f"{path}: {ours!r} is not {theirs!r}"
        return
    assert ours == theirs, f"{path}: {ours!r} != {theirs!r}"
    assert type(ours) is type(theirs), f"{path}: {ours!r} != {theirs!r}"


def assert_same_event(
    ours: dict[str, Any],
    theirs: dict[str, Any],
    *,
    kept: Collection[str] = (),
    window: tuple[dt.datetime, dt.datetime] | None = None,
    caller_library: bool = False,
) -> None:
    """``ours`` (rudder_fast) is ``theirs`` (rudder-sdk-python) but for the documented differences.

    ``kept``: paths (``properties.session``) of values the SDK deleted and rudder_fast keeps.
    ``window``: when the calls were made; the call time each library records must fall in it.
    ``caller_library``: the caller's context had a ``library``, which rudder_fast keeps.
    """
    ours, theirs = dict(ours), dict(theirs)
    where = f"{theirs.get('type')} {theirs.get('event') or theirs.get('name') or ''}".strip()
    for event in (ours, theirs):
        event.pop("receivedAt", None)  # added by the devserver to both
    # Per-event sentAt: rudder_fast sends one with every attempt; the SDK one per batch (dropped there).
    sent_at = ours.pop("sentAt", None)
    assert sent_at is None or WIRE_TIME.match(sent_at), sent_at
    assert "sentAt" not in theirs
    # Absent fields: the SDK sends null, rudder_fast leaves them out.
    for key in [k for k, v in theirs.items() if v is None]:
        assert key not in ours, f"{where}: {key} is {ours[key]!r} here, null in the SDK's event"
        del theirs[key]
    # messageId: each library makes its own unless the caller gave one.
    mine, their_id = ours.pop("messageId"), theirs.pop("messageId")
    if not GENERATED_MESSAGE_ID.match(mine):
        assert mine == their_id, f"{where}: messageId {mine!r} != {their_id!r}"
    else:
        assert uuid.UUID(their_id).version == 4, their_id
    # Time: the SDK sends the call time (or the caller's) as timestamp; rudder_fast the call time as
    # originalTimestamp, and timestamp only when the caller gave one.
    original = ours.pop("originalTimestamp")
    assert WIRE_TIME.match(original), original
    assert "originalTimestamp" not in theirs
    their_time = theirs.pop("timestamp")
    if "timestamp" in ours:
        given = ours.pop("timestamp")
        assert instant(given) == instant(their_time), f"{where}: timestamp {given!r} != {their_time!r}"
    elif window is not None:
        start, end = (t.replace(microsecond=t.microsecond // 1000 * 1000) for t in window)
        slack = dt.timedelta(milliseconds=1)
        assert start - slack <= instant(original) <= end + slack, (original, window)
        assert start - slack <= instant(their_time) <= end + slack, (their_time, window)
    # context.library: each library names itself (a caller's own library wins here, not there).
    our_context, their_context = dict(ours.pop("context")), dict(theirs.pop("context"))
    assert their_context.pop("library") == SDK_LIBRARY
    library = our_context.pop("library")
    if not caller_library:
        assert library == OUR_LIBRARY, library
    # identify: rudder_fast also puts the traits at the top level; both have context.traits.
    if ours["type"] == "identify":
        assert ours.pop("traits") == our_context["traits"], f"{where}: top-level traits"
    # groupId and previousId: a number is sent as its string here, as a JSON number by the SDK.
    for key in ("groupId", "previousId"):
        if isinstance(theirs.get(key), (int, float)) and not isinstance(theirs[key], bool):
            assert ours[key] == str(theirs[key]), f"{where}: {key} {ours[key]!r}"
            theirs[key] = ours[key]
    _same_value(our_context, their_context, "context", kept)
    _same_value(ours, theirs, "", kept)


def event_key(event: dict[str, Any]) -> tuple[str, ...]:
    """A sort key both libraries' events share for the same call (for deliveries in any order): the
    ids, the name, a caller's messageId and the integer properties (written alike by both)."""
    values = event.get("properties") or event.get("context", {}).get("traits") or event.get("traits") or {}
    integers = sorted((k, v) for k, v in values.items() if type(v) is int)
    mid = str(event.get("messageId") or "")
    if GENERATED_MESSAGE_ID.match(mid) or re.fullmatch(r"[0-9a-f-]{36}", mid):
        mid = ""
    return (
        str(event.get("type")),
        str(event.get("userId") or ""),
        str(event.get("anonymousId") or ""),
        str(event.get("event") or event.get("name") or ""),
        str(event.get("groupId") or event.get("previousId") or ""),
        mid,
        repr(integers),
    )


def assert_same_events(
    ours: Sequence[dict[str, Any]],
    theirs: Sequence[dict[str, Any]],
    *,
    kept: Collection[str] = (),
    window: tuple[dt.datetime, dt.datetime] | None = None,
) -> None:
    """The same events, in any order, each the same but for the documented differences."""
    assert len(ours) == len(theirs), f"{len(ours)} events here, {len(theirs)} from the SDK:\n{ours}\n{theirs}"
    for mine, their in zip(sorted(ours, key=event_key), sorted(theirs, key=event_key), strict=True):
        assert event_key(mine) == event_key(their), (mine, their)
        assert_same_event(mine, their, kept=kept, window=window)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    import orjson

    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
