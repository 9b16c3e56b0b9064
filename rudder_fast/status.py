"""``rudder-fast status``: the spool's backlog, its producers, its sender and the delivery counters.

Read-only: it never takes the sender's lock for more than a probe, never modifies the ledger, and works
whether or not a sender is running (counters then come from the ledger, as last committed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from . import counts, ledger, locate, safefile
from .counts import Counters
from .layout import SpoolPaths
from .quota import sender_running
from .reading import scan_pending
from .tail import list_segments, writer_alive


def _live_producers(segments: Path) -> int:
    live = 0
    for path in list_segments(segments):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if writer_alive(fd):
                live += 1
        finally:
            os.close(fd)
    return live


def sender_running_on(spool_dir: Path) -> bool:
    return sender_running(SpoolPaths(spool_dir).sender_lock)


def notes(spool_dir: Path, running: bool, environ: dict[str, str] | None = None) -> list[str]:
    """What a reader of this spool's status must not miss: no sender reading it, and events that wait
    in another known spool which no sender reads (an app and a sender on different directories)."""
    found = []
    if not running:
        found.append(
            f"no sender is running on {spool_dir}: its events wait there until one starts "
            f"(`rudder-fast-sender --spool-dir {spool_dir}`)"
        )
    found.extend(locate.describe(other) for other in locate.other_spools(spool_dir, environ))
    return found


def collect(spool_dir: Path) -> dict[str, Any]:
    """The status document (the ``--json`` form)."""
    paths = SpoolPaths(spool_dir)
    state = ledger.read(paths.ledger) or ledger.LedgerState()
    pending = scan_pending(spool_dir, acked=state.offsets, ahead=state.ahead)
    sender_doc: dict[str, Any] = {}
    raw = safefile.read_small(paths.status)
    if raw is not None:
        try:
            loaded = orjson.loads(raw)
        except orjson.JSONDecodeError:
            loaded = None
        if isinstance(loaded, dict):
            sender_doc = loaded
    running = sender_running(paths.sender_lock)
    counters = Counters.from_json(sender_doc.get("counters")) if running else state.counters
    dropped = counts.with_total(counters.dropped, pending.dropped)
    now_ns = time.time_ns()
    return {
        "spool_dir": str(spool_dir),
        "backlog": {
            "events": pending.events,
            "bytes": pending.bytes,
            "segments": pending.segments,
            "oldest_age_s": (now_ns - pending.oldest_ns) / 1e9 if pending.oldest_ns else None,
        },
        "producers": {
            "live": _live_producers(paths.segments),
            "recent": sorted(
                ({"nonce": k, **v} for k, v in state.producers.items()),
                key=lambda p: p.get("last_seen", 0),
                reverse=True,
            )[:50],
        },
        "sender": {
            "state": sender_doc.get("state", "unknown") if running else "not running",
            "state_since": sender_doc.get("state_since") if running else None,
            "pid": sender_doc.get("pid") if running else None,
            "data_plane_url": sender_doc.get("data_plane_url"),
            "data_planes": sender_doc.get("data_planes") or [],
            "requests_in_flight": sender_doc.get("requests_in_flight", 0) if running else 0,
            "oldest_request_age_s": sender_doc.get("oldest_request_age_s") if running else None,
            "events_per_s": sender_doc.get("events_per_s", 0.0) if running else 0.0,
            "rate_window_s": sender_doc.get("rate_window_s", 0.0) if running else 0.0,
            "process": sender_doc.get("process") if running else None,
            "updated_at": sender_doc.get("updated_at"),
        },
        "counters": {
            "accepted": counts.accepted(counters, pending.events),
            "dropped": dropped,
            "sent": counters.sent,
            "retried": counters.retried,
            "rejected": counters.rejected,
            "skipped_bytes": counters.skipped_bytes + pending.skipped_bytes,
        },
        "last_error": sender_doc.get("last_error"),
        "last_error_at": sender_doc.get("last_error_at"),
        "notes": notes(spool_dir, running),
    }


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(doc: dict[str, Any]) -> str:
    """The human view."""
    b, s, c = doc["backlog"], doc["sender"], doc["counters"]
    dropped = {k: v for k, v in c["dropped"].items() if k != "total"}
    lines = [
        f"spool      {doc['spool_dir']}",
        f"backlog    {b['events']:,} events, {b['bytes']:,} bytes in {b['segments']} segments; "
        f"oldest {_age(b['oldest_age_s'])}",
        f"producers  {doc['producers']['live']} live",
        f"sender     {s['state']}"
        + (f" (pid {s['pid']})" if s["pid"] else "")
        + (f" -> {s['data_plane_url']}" if s["data_plane_url"] else "")
        + _rate(s),
        *_requests(s),
        *_data_planes(s),
        f"sent       {c['sent']:,}    retried {c['retried']:,}    rejected {c['rejected']:,}    "
        f"skipped {c['skipped_bytes']:,} bytes",
        f"dropped    {c['dropped']['total']:,}"
        + (" (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(dropped.items())) + ")" if dropped else ""),
    ]
    if doc.get("last_error"):
        at = doc.get("last_error_at")
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else "?"
        lines.append(f"last error {doc['last_error']} (at {when})")
    process = s.get("process")
    if process:
        lines.append(
            f"process    cpu {process['cpu_s']:,.1f} s, rss {process['rss_bytes'] / 2**20:,.1f} MiB, "
            f"{process['open_files']} open files"
        )
    lines.extend(f"note       {note}" for note in doc.get("notes", []))
    return "\n".join(lines)


def _requests(sender: dict[str, Any]) -> list[str]:
    """The requests waiting for an answer, when one has waited long enough to notice."""
    oldest = sender.get("oldest_request_age_s")
    if not oldest or oldest < 1.0:
        return []
    n = sender.get("requests_in_flight") or 0
    return [f"requests   {n} waiting for an answer, the oldest for {_age(oldest)}"]


def _data_planes(sender: dict[str, Any]) -> list[str]:
    """With several data planes: each one's state, the one in use marked."""
    planes = sender.get("data_planes") or []
    if len(planes) < 2:
        return []
    lines = []
    for plane in planes:
        mark = "in use" if plane.get("in_use") else plane.get("state", "?")
        error = f": {plane['last_error']}" if plane.get("last_error") and not plane.get("in_use") else ""
        lines.append(f"  {'*' if plane.get('in_use') else ' '} {plane.get('url')} ({mark}){error}")
    return ["data planes", *lines]


def _rate(sender: dict[str, Any]) -> str:
    """The delivery rate, over the time it was measured on (up to a minute; less after a start)."""
    window = sender.get("rate_window_s") or 0.0
    if sender["state"] != "ok" or window <= 0:
        return ""
    span = "the last minute" if window >= 59.5 else f"the last {window:.0f} s"
    return f", {sender['events_per_s']:,.1f} events/s over {span}"
