"""Reading the whole spool at once, for ``rudder-fast inspect`` and ``status``: what is still pending."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import orjson

from .framing import FRAME_DROPS, FRAME_EVENT, Frame, decode_drops
from .layout import SpoolPaths
from .tail import in_ranges, list_segments, read_whole
from .wire import WireMapper


@dataclass
class PendingSummary:
    events: int = 0
    segments: int = 0
    bytes: int = 0
    skipped_bytes: int = 0
    undecodable: int = 0
    oldest_ns: int | None = None
    dropped: dict[str, int] = field(default_factory=dict)


def scan_pending(
    spool_dir: Path,
    *,
    on_event: Callable[[bytes], object] | None = None,
    acked: dict[str, int] | None = None,
    ahead: dict[str, list[list[int]]] | None = None,
) -> PendingSummary:
    """Walk every segment past its acknowledged offset; call ``on_event`` with each event's JSON."""
    from . import __version__

    mapper = WireMapper(__version__)
    summary = PendingSummary()
    acked = acked or {}
    for path in list_segments(SpoolPaths(spool_dir).segments):
        tail, items = read_whole(path, acked.get(path.name, 0))
        if tail is None:
            continue
        try:
            summary.segments += 1
            summary.bytes += max(0, tail.read_pos - tail.decoder.offset) + sum(
                i.end - i.offset for i in items if isinstance(i, Frame)
            )
            resolved = (ahead or {}).get(path.name)
            first_seen = False
            for item in items:
                if in_ranges(item.offset, resolved):
                    continue  # acknowledged out of order before the sender's last commit
                if not isinstance(item, Frame):
                    summary.skipped_bytes += item.length
                    continue
                if item.type == FRAME_DROPS:
                    for reason, n in decode_drops(item.payload).items():
                        summary.dropped[reason] = summary.dropped.get(reason, 0) + n
                    continue
                if item.type != FRAME_EVENT:
                    continue
                if on_event is None and first_seen:
                    summary.events += 1  # counting only (status): the segment's first event dated it
                    continue
                first_seen = True
                try:
                    record = msgpack.unpackb(item.payload)
                    event = mapper.event(record, tail.nonce, item.seq)
                except Exception:  # a CRC-valid frame this version cannot read
                    summary.undecodable += 1
                    continue
                summary.events += 1
                if summary.oldest_ns is None or record[1] < summary.oldest_ns:
                    summary.oldest_ns = record[1]
                if on_event is not None:
                    on_event(orjson.dumps(event))
        finally:
            tail.close()
    return summary
