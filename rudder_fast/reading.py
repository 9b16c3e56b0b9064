"""Reading the whole spool at once, for ``rudder-fast inspect`` and ``status``: what is still pending."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import orjson

from . import __version__, counts
from .framing import FRAME_DROPS, FRAME_EVENT, Frame, decode_drops
from .layout import SpoolPaths
from .tail import SegmentTail, list_segments, walk
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
    mapper = WireMapper(__version__)
    summary = PendingSummary()
    acked = acked or {}
    for path in list_segments(SpoolPaths(spool_dir).segments):
        tail = SegmentTail.open(path, acked.get(path.name, 0))
        if tail is None:
            continue
        try:
            summary.segments += 1
            _scan_segment(tail, (ahead or {}).get(path.name), summary, mapper, on_event)
        finally:
            tail.close()
    return summary


def _scan_segment(  # noqa: C901 - one pass over the frames, each kind counted where it lands
    tail: SegmentTail,
    resolved: list[list[int]] | None,
    summary: PendingSummary,
    mapper: WireMapper,
    on_event: Callable[[bytes], object] | None,
) -> None:
    dated = False
    for item, done in walk(tail, resolved):
        if isinstance(item, Frame):
            summary.bytes += item.end - item.offset
        if done:
            continue  # acknowledged out of order before the sender's last commit
        if not isinstance(item, Frame):
            summary.skipped_bytes += item.length
            continue
        if item.type == FRAME_DROPS:
            counts.add(summary.dropped, decode_drops(item.payload))
            continue
        if item.type != FRAME_EVENT:
            continue
        if on_event is None and dated:
            summary.events += 1  # counting only (status): the segment's first event dated it
            continue
        dated = True
        try:
            record = msgpack.unpackb(item.payload)
            event = mapper.event(record, tail.nonce, item.seq)
        except Exception:  # noqa: BLE001 - a CRC-valid frame this version cannot read: any decoder error
            summary.undecodable += 1
            continue
        summary.events += 1
        if summary.oldest_ns is None or record[1] < summary.oldest_ns:
            summary.oldest_ns = record[1]
        if on_event is not None:
            on_event(orjson.dumps(event))
    summary.bytes += max(0, tail.read_pos - tail.decoder.offset)  # a live writer's incomplete frame
