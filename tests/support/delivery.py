"""Checks on what crossed the wire: every expected event exactly once, and each one well formed.

The events are the devserver's ``--out`` lines (:meth:`tests.support.devserver.DevServer.received`):
what the data plane accepted, with the ``receivedAt`` it added.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests.support.devserver import DevServer
from tests.support.producers import Produced
from tests.support.spool import inspect_spool, segment_files

EVENT_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})


def iso_ms(value: str) -> int:
    """Epoch milliseconds of a wire timestamp (``2026-11-26T10:01:02.345Z``); asserts the format."""
    assert isinstance(value, str), value
    assert value.endswith("Z"), value
    assert len(value) == 24, value
    assert value[19] == ".", value
    parsed = dt.datetime.fromisoformat(value[:-1] + "+00:00")
    return int(parsed.timestamp() * 1000 + 0.5)


def assert_delivered_exactly(received: Iterable[dict[str, Any]], expected: Iterable[str]) -> None:
    """Every expected messageId arrived exactly once, and nothing else arrived."""
    want_list = list(expected)
    want = set(want_list)
    assert len(want) == len(want_list), "the expected messageIds repeat"
    counts = collections.Counter(e["messageId"] for e in received)
    duplicates = {mid: n for mid, n in counts.items() if n > 1}
    missing = want - counts.keys()
    unexpected = counts.keys() - want
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert not unexpected, f"{len(unexpected)} unknown messageIds, e.g. {sorted(unexpected)[:5]}"
    assert not duplicates, f"{len(duplicates)} duplicated, e.g. {list(duplicates.items())[:5]}"


def delivered_once(devserver: DevServer, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every one of ``ids`` arrived exactly once and nothing else arrived; the received events."""
    received = devserver.received()
    assert_delivered_exactly(received, ids)
    assert len(received) == len(ids)
    return received


def assert_valid_wire_event(event: dict[str, Any]) -> None:
    """One received event of :func:`tests.support.producers.fill_spool`'s against the wire contract's
    field table (docs/wire.md)."""
    assert event.get("type") in EVENT_TYPES, event
    assert isinstance(event.get("messageId"), str), event
    assert event["messageId"].strip(), event
    user_id, anonymous_id = event.get("userId"), event.get("anonymousId")
    assert (isinstance(user_id, str) and user_id.strip()) or (
        isinstance(anonymous_id, str) and anonymous_id.strip()
    ), event
    assert event.get("channel") == "server", event
    assert event["context"]["library"]["name"] == "rudder-fast", event
    assert isinstance(event["context"]["library"].get("version"), str), event
    assert isinstance(event.get("integrations"), dict), event
    original = iso_ms(event["originalTimestamp"])
    sent = iso_ms(event["sentAt"])
    received = iso_ms(event["receivedAt"])
    assert original <= sent <= received, event
    assert event.get("event") == "E2E Event", event
    assert isinstance(event.get("properties"), dict), event


def assert_wire_event(event: dict[str, Any]) -> None:
    """A received event is a well-formed track event of ours (the fault suites' or ``fill_spool``'s),
    not garbage that happened to parse."""
    assert event.get("type") == "track", event
    assert event.get("event") in ("Fault Event", "E2E Event"), event
    assert isinstance(event.get("messageId"), str), event
    assert event["messageId"], event
    user_id, anonymous_id = event.get("userId"), event.get("anonymousId")
    assert (isinstance(user_id, str) and user_id.startswith("user-")) or (
        isinstance(anonymous_id, str) and anonymous_id.startswith("anon-")
    ), event
    assert event["context"]["library"]["name"] == "rudder-fast", event
    props = event.get("properties")
    assert isinstance(props, dict), event
    assert isinstance(props.get("n"), int), event


def assert_spool_empty(spool_dir: Path) -> None:
    """Nothing is pending (``rudder-fast inspect`` says so) and no segment is left."""
    pending, summary = inspect_spool(spool_dir)
    assert pending == [], f"{len(pending)} events still pending: {summary}"
    assert "0 events pending" in summary, summary
    assert segment_files(spool_dir) == [], segment_files(spool_dir)


def assert_exactly_once(received: list[dict[str, Any]], produced: Produced) -> None:
    """Every event :func:`tests.support.producers.fill_spool` produced arrived exactly once, nothing else."""
    assert_delivered_exactly(received, produced.ids)
    assert len(received) == len(produced.ids)
