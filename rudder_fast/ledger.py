"""The sender's durable record of what the data plane acknowledged.

How this works
--------------
The ledger maps each segment's file name to the offset up to which every event was acknowledged (or
quarantined, or skipped as torn/corrupt), together with the delivery counters, so offsets and counters
always move together. Batches are acknowledged out of order (K in flight, one may be retried while the
next ones succeed), so it also records, per segment, the resolved ranges beyond that offset: after a
crash only the batches that were in flight are sent again.

It is replaced atomically: written to ``ledger.tmp``, fsynced, renamed over ``ledger``, and the
directory fsynced. A crash at any point leaves either the old or the new ledger.

File format: one line ``rudder-fast-ledger 1 <crc32 of the JSON, hex>``, then the JSON. A ledger that
fails its check is set aside as ``ledger.corrupt-<time>`` and the sender starts from the segments'
beginnings: events are resent (same messageIds), never lost.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import counts, safefile
from .counts import Counters

log = logging.getLogger("rudder_fast.sender")

_MAGIC = b"rudder-fast-ledger 1 "


# Per-producer counters are kept for this many producers (the most recently active): enough to see
# which processes drop or lose bytes, bounded however many short-lived processes come and go.
MAX_PRODUCERS = 256


@dataclass
class LedgerState:
    generation: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    producers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per segment: ranges beyond its offset already resolved (acknowledged out of order), [start, end).
    ahead: dict[str, list[list[int]]] = field(default_factory=dict)

    def credit_producer(
        self, nonce: str, *, pid: int, events: int, skipped: int, drops: dict[str, int] | None, now: float
    ) -> None:
        p = self.producers.get(nonce)
        if p is None:
            if len(self.producers) >= MAX_PRODUCERS:
                oldest = min(self.producers, key=lambda k: self.producers[k].get("last_seen", 0))
                del self.producers[oldest]
            p = self.producers[nonce] = {"pid": pid, "sent": 0, "skipped_bytes": 0, "dropped": {}}
        p["sent"] += events
        p["skipped_bytes"] += skipped
        counts.add(p["dropped"], drops)
        p["last_seen"] = now


def encode(state: LedgerState) -> bytes:
    body = orjson.dumps(
        {
            "generation": state.generation,
            "offsets": state.offsets,
            "counters": state.counters.to_json(),
            "producers": state.producers,
            "ahead": state.ahead,
        }
    )
    return _MAGIC + f"{zlib.crc32(body):08x}\n".encode() + body


def decode(data: bytes) -> LedgerState | None:
    """The ledger in ``data``, or None if it is not a whole, valid ledger."""
    if not data.startswith(_MAGIC):
        return None
    head, sep, body = data.partition(b"\n")
    if not sep:
        return None
    try:
        crc = int(head[len(_MAGIC) :], 16)
    except ValueError:
        return None
    if zlib.crc32(body) != crc:
        return None
    try:
        obj = orjson.loads(body)
        offsets = {str(k): int(v) for k, v in obj["offsets"].items()}
        return LedgerState(
            generation=int(obj["generation"]),
            offsets=offsets,
            counters=Counters.from_json(obj.get("counters")),
            producers=obj.get("producers") if isinstance(obj.get("producers"), dict) else {},
            ahead={str(k): [[int(a), int(b)] for a, b in v] for k, v in (obj.get("ahead") or {}).items()},
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def read(path: Path) -> LedgerState | None:
    """The committed ledger, read-only (for ``status``, ``inspect`` and producers): an empty state if
    there is none, None if it is damaged. Raises ``safefile.NotRegularFile`` if its name holds a FIFO,
    a directory or a symlink."""
    data = safefile.read_small(path)
    if data is None:
        return LedgerState()
    return decode(data)


def load(path: Path) -> LedgerState:
    """The ledger for the sender: a damaged one is set aside (events are resent, never lost)."""
    data = safefile.read_small(path)
    if data is None:
        return LedgerState()
    state = decode(data)
    if state is None:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        os.replace(path, aside)
        log.error(
            "ledger %s is corrupt; set aside as %s: pending events will be resent from the start "
            "of their segments (duplicates, not losses)",
            path,
            aside,
        )
        return LedgerState()
    return state


def commit(path: Path, state: LedgerState) -> None:
    """Durably replace the ledger with ``state`` (write temp, fsync, rename, fsync directory)."""
    state.generation += 1
    safefile.replace(path, encode(state), durable=True)
