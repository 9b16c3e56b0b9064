"""What a running sender tells the world about itself, once a second: ``<spool>/status`` (read by
``rudder-fast status``), the metrics snapshot (served on ``/metrics``, written to a textfile), and a
warning when producers start or stop dropping events.

The snapshot is built by the main thread and replaced whole; the metrics server's threads only read
the last one, never the sender's live state.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import __version__, config, metrics, safefile
from .counts import Counters
from .delivery import DeliveryState
from .selfwatch import SelfWatch
from .wire import speedups_built

log = logging.getLogger("rudder_fast.sender")

RATE_WINDOW_S = 60.0  # events/s is averaged over this long (or the time since the start, if shorter)


@dataclass
class Moment:
    """The figures of one moment of the sender, gathered by its main loop."""

    counters: Counters
    inflight: int
    usage_bytes: int
    segments: int
    live_producers: int


class Publisher:
    def __init__(self, status_path: Path, cfg: config.SenderConfig, state: DeliveryState) -> None:
        self.status_path = status_path
        self.cfg = cfg
        self.state = state
        self.started = time.monotonic()
        self.next_at = 0.0
        self._changes = -1  # the delivery state's change count at the last publication
        self.snapshot: metrics.MetricsSnapshot | None = None
        self._sent: collections.deque[tuple[float, int]] = collections.deque()
        self._drops_seen = -1  # set at the first publication: only new drops are announced
        self._dropping_since: float | None = None
        self._last_drop_at = 0.0
        self._self = SelfWatch()

    def delivered(self, now: float, events: int) -> None:
        """Events acknowledged now (for the delivery rate)."""
        self._sent.append((now, events))

    def rate_window(self, now: float) -> float:
        """How long the rate is measured over: the last minute, or as long as the sender has run."""
        return min(RATE_WINDOW_S, max(1e-3, now - self.started))

    def rate(self, now: float) -> float:
        """Events delivered per second, over :meth:`rate_window`."""
        window = self._sent
        while window and window[0][0] < now - RATE_WINDOW_S:
            window.popleft()
        return sum(n for _, n in window) / self.rate_window(now)

    def publish_if_due(self, now: float, take: Callable[[], Moment]) -> None:
        """Once a second, and at once when the delivery state changed (a stall, a failover). ``take``
        makes the moment to publish: only then, since the sender's loop asks every turn."""
        if now >= self.next_at or self.state.changes != self._changes:
            self.next_at = now + config.STATUS_INTERVAL_S
            moment = take()
            self._watch_drops(now, moment.counters)
            self.publish(moment)

    def publish(self, moment: Moment, final: bool = False) -> None:
        now = time.monotonic()
        rate = self.rate(now)
        process = self._self.figures()
        c = moment.counters
        counters = c.to_json()
        retried = counters["retried"] = c.retried + self.state.retries_unsettled()  # as they happen
        self._changes = self.state.changes
        state = self.state.state
        planes = self.state.data_planes()
        oldest = self.state.oldest_request_age(now)
        status: dict[str, Any] = {
            "pid": os.getpid(),
            "state": "stopped" if final else state,
            "state_since": self.state.since,
            "data_plane_url": self.state.url,
            "data_planes": planes,
            "requests_in_flight": self.state.requests_in_flight(),
            "oldest_request_age_s": None if oldest is None else round(oldest, 3),
            "write_key_fingerprint": self.cfg.key_fingerprint,
            "updated_at": time.time(),
            "events_per_s": rate,
            "rate_window_s": round(self.rate_window(now), 1),
            "process": process.to_json() if process is not None else None,
            "loops": "C" if speedups_built() else "Python",  # its per-event loops (README: Install)
            "inflight": moment.inflight,
            "counters": counters,
            "last_error": self.state.last_error,
            "last_error_at": self.state.last_error_at,
        }
        self.snapshot = metrics.MetricsSnapshot(
            version=__version__,
            state=state if state in metrics.SENDER_STATES else "starting",
            events_sent=c.sent,
            request_retries=retried,
            events_rejected=c.rejected,
            skipped_bytes=c.skipped_bytes,
            dropped=c.dropped,
            requests_in_flight=moment.inflight,
            delivery_rate=rate,
            backlog_bytes=moment.usage_bytes,
            backlog_segments=moment.segments,
            live_producers=moment.live_producers,
            process=process,
            up=not final,
            oldest_request_age_s=oldest or 0.0,
            data_planes=tuple(metrics.DataPlane(p["url"], p["state"], p["in_use"]) for p in planes),
        )
        if self.cfg.metrics_textfile is not None:
            try:
                metrics.write_textfile(self.cfg.metrics_textfile, metrics.render(self.snapshot))
            except OSError as exc:
                log.debug("cannot write the metrics textfile: %s", exc)
        try:
            safefile.replace(self.status_path, orjson.dumps(status), durable=False)
        except OSError as exc:
            log.debug("cannot write status: %s", exc)

    def metrics_bytes(self) -> bytes:
        """The Prometheus exposition of the last snapshot (called on the metrics server's threads)."""
        snap = self.snapshot
        if snap is None:
            raise metrics.MetricsUnavailable("the sender has not published its counters yet")
        return metrics.render(snap)

    def _watch_drops(self, now: float, counters: Counters) -> None:
        """One warning when producers start dropping events, one when they stop: never one per event."""
        total = sum(counters.dropped.values())
        if self._drops_seen < 0:
            self._drops_seen = total  # drops from before this sender started are old news
            return
        if total > self._drops_seen:
            if self._dropping_since is None:
                log.warning(
                    "producers report dropped events: %s in total since the spool was made (their reports "
                    "are read with their events, so they may predate this sender; see `rudder-fast status`)",
                    dict(counters.dropped),
                )
                self._dropping_since = now
            self._drops_seen = total
            self._last_drop_at = now
        elif self._dropping_since is not None and now - self._last_drop_at >= config.DROPS_QUIET_S:
            log.warning(
                "no new drop reported by producers for %.0f s; dropped in total: %s",
                config.DROPS_QUIET_S,
                dict(counters.dropped),
            )
            self._dropping_since = None
