"""Prometheus metrics for ``rudder-fast-sender``: the text exposition format, a scrape endpoint, a textfile.

Three pieces, each usable alone:

* :func:`render` turns a :class:`MetricsSnapshot` (plain values, frozen) into the Prometheus text
  exposition format, version 0.0.4. It is a pure function: no clock, no I/O, no global registry.
* :class:`MetricsServer` answers ``GET /metrics`` on a small threaded HTTP server (loopback unless told
  otherwise) with whatever bytes its ``provider`` returns. The provider is called on a server thread;
  it should return bytes rendered from a snapshot the sender's main thread published, and never touch
  the sender's live state.
* :func:`write_textfile` writes the same bytes atomically for node-exporter's textfile collector.

Why no ``prometheus_client``: the project's runtime dependencies are few, each for a speed measured
where it is used (pyproject.toml), and what the sender exposes is a fixed set of about fifteen
families whose values it already keeps. The format is a short line-based text specification
(``# HELP``, ``# TYPE``, one sample per line, three escapes in label values), so a few dozen lines
written from the specification cost less than a dependency, its global registry and its collector
protocol. The tests parse the output back with their own parser and, when installed, with
``prometheus_client``'s as an independent check.

The counters (sent, retries, rejected, dropped, skipped bytes) are those of the sender's ledger: they
survive restarts and only go back to zero if the ledger is lost, which Prometheus treats as a counter
reset. Retries count each failed attempt as it happens (the ledger records a batch's once it is
resolved), so an outage shows while it lasts.
"""

from __future__ import annotations

import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast
from urllib.parse import urlsplit

from . import config, safefile
from .counts import DROP_REASONS

log = logging.getLogger("rudder_fast.metrics")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
METRICS_PATH: Final = "/metrics"
DEFAULT_HOST: Final = config.METRICS_HOST
SENDER_STATES: Final = ("starting", "ok", "stalled", "backoff", "halted", "disabled")
# A data plane's states (rudder_fast.gate) in which it is not known to be failing.
DATA_PLANE_UP_STATES: Final = ("starting", "standby", "ok")
# Drop reasons producers and the sender count: exported as 0 from the start, so rate() and alerts see the
# series before the first drop happens. Any other reason found in the spool is exported as it appears.
KNOWN_DROP_REASONS: Final = DROP_REASONS

IDLE_TIMEOUT_S: Final = 120.0  # a keep-alive connection idle this long is closed (scrapes are ~15-60 s)
POLL_INTERVAL_S: Final = 0.2  # how quickly close() stops the accept loop
CLOSE_WAIT_S: Final = 2.0  # close() waits this long for connection threads to finish


# -- the snapshot and the exposition format --------------------------------------------------------------


class MetricsUnavailable(Exception):
    """Raised by a provider that has nothing true to say yet (before the ledger's counters are loaded):
    the scrape is answered 503, a failed scrape, instead of counters at zero that would read as a reset."""


@dataclass(frozen=True)
class ProcessFigures:
    """The sender's own process, as Prometheus's standard ``process_*`` metrics describe one."""

    cpu_seconds: float  # user + system
    resident_bytes: int
    virtual_bytes: int
    open_fds: int
    max_fds: int | None  # None: unlimited
    start_time_seconds: float  # since the Unix epoch

    def to_json(self) -> dict[str, float | int | None]:
        """The form ``status`` shows."""
        return {
            "cpu_s": round(self.cpu_seconds, 3),
            "rss_bytes": self.resident_bytes,
            "open_files": self.open_fds,
            "started_at": self.start_time_seconds,
        }


@dataclass(frozen=True)
class DataPlane:
    """One configured data plane: its URL (never with credentials), its state, whether it is in use."""

    url: str
    state: str
    in_use: bool


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the sender knows at one moment, as plain values. ``None`` means unknown: not exported.

    ``dropped`` is copied (and made read-only) at construction, so a snapshot built from the sender's
    live counters stays valid while the sender goes on counting.
    """

    version: str
    state: str  # one of SENDER_STATES
    events_sent: int = 0
    request_retries: int = 0
    events_rejected: int = 0
    skipped_bytes: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)  # reason -> events; no "total" entry
    requests_in_flight: int = 0
    delivery_rate: float = 0.0  # events per second, over the last minute
    backlog_events: int | None = None
    backlog_bytes: int | None = None
    backlog_segments: int | None = None
    oldest_event_age_s: float | None = None
    live_producers: int | None = None
    process: ProcessFigures | None = None
    up: bool = True  # False only for a last textfile written as the sender stops
    oldest_request_age_s: float = 0.0  # the oldest request still without an answer (0: none in flight)
    data_planes: tuple[DataPlane, ...] = ()  # in order of preference; none: not exported

    def __post_init__(self) -> None:
        if self.state not in SENDER_STATES:
            raise ValueError(f"state must be one of {', '.join(SENDER_STATES)}, not {self.state!r}")
        object.__setattr__(self, "dropped", MappingProxyType(dict(self.dropped)))


Labels = Mapping[str, str]
Sample = tuple[Labels, float]  # an int stays an int: counters are written exactly
_NO_LABELS: Final[Labels] = MappingProxyType({})


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, int):  # exact, however large (a float would round counters past 2**53)
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _family(out: list[str], name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
    out.append(f"# HELP {name} {_escape_help(help_text)}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        if labels:
            inner = ",".join(f'{key}="{_escape_label_value(val)}"' for key, val in labels.items())
            out.append(f"{name}{{{inner}}} {_format_value(value)}")
        else:
            out.append(f"{name} {_format_value(value)}")


def _single(value: float) -> list[Sample]:
    return [(_NO_LABELS, value)]


def _process_families(p: ProcessFigures) -> list[Family]:
    """The standard process metrics (the names and help texts client libraries export)."""
    families = [
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
         _single(p.cpu_seconds)),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
         _single(p.resident_bytes)),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", _single(p.virtual_bytes)),
        ("process_open_fds", "gauge", "Number of open file descriptors.", _single(p.open_fds)),
        ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
         _single(p.start_time_seconds)),
    ]  # fmt: skip
    if p.max_fds is not None:
        families.append(
            ("process_max_fds", "gauge", "Maximum number of open file descriptors.", _single(p.max_fds))
        )
    return families


Family = tuple[str, str, str, list[Sample]]  # name, type, help, samples


def _data_plane_families(planes: tuple[DataPlane, ...]) -> list[Family]:
    """Which data plane is in use, and which are up, one series per configured URL."""
    return [
        (
            "rudder_fast_data_plane_in_use", "gauge",
            "1 for the data plane the sender delivers to (--data-plane-url, in order), 0 for the others.",
            [({"url": p.url}, 1 if p.in_use else 0) for p in planes],
        ),
        (
            "rudder_fast_data_plane_up", "gauge",
            "1 for a data plane not known to be failing, 0 for one that failed and is being probed.",
            [({"url": p.url}, 1 if p.state in DATA_PLANE_UP_STATES else 0) for p in planes],
        ),
    ]  # fmt: skip


def render(snapshot: MetricsSnapshot) -> bytes:
    """The snapshot in the Prometheus text exposition format 0.0.4 (UTF-8, ending with a newline)."""
    families = _counter_families(snapshot) + _gauge_families(snapshot)
    if snapshot.process is not None:
        families += _process_families(snapshot.process)
    out: list[str] = []
    for name, kind, help_text, samples in families:
        _family(out, name, kind, help_text, samples)
    out.append("")
    return "\n".join(out).encode("utf-8", "replace")


def _counter_families(s: MetricsSnapshot) -> list[Family]:
    dropped = dict.fromkeys(KNOWN_DROP_REASONS, 0)
    dropped.update(s.dropped)
    return [
        (
            "rudder_fast_events_sent_total", "counter", "Events the data plane accepted.",
            _single(s.events_sent),
        ),
        (
            "rudder_fast_request_retries_total", "counter",
            "Requests to the data plane that failed (network error, 429, 5xx, 401, 404) and were retried.",
            _single(s.request_retries),
        ),
        (
            "rudder_fast_events_rejected_total", "counter",
            "Events the data plane refused (or too large to send), kept in rejected/.",
            _single(s.events_rejected),
        ),
        (
            "rudder_fast_events_dropped_total", "counter",
            "Events lost before delivery, by reason: dropped by producers, or deleted unsent by the sender.",
            [({"reason": reason}, dropped[reason]) for reason in sorted(dropped)],
        ),
        (
            "rudder_fast_skipped_bytes_total", "counter",
            "Spool bytes skipped as corrupt, torn or unreadable.", _single(s.skipped_bytes),
        ),
    ]  # fmt: skip


def _gauge_families(s: MetricsSnapshot) -> list[Family]:
    families: list[Family] = []
    for name, help_text, value in (
        ("rudder_fast_backlog_events", "Events in the spool not yet delivered.", s.backlog_events),
        ("rudder_fast_backlog_bytes", "Spool bytes not yet acknowledged.", s.backlog_bytes),
        ("rudder_fast_backlog_segments", "Segment files in the spool.", s.backlog_segments),
        (
            "rudder_fast_oldest_event_age_seconds",
            "Age of the oldest event not yet delivered.",
            s.oldest_event_age_s,
        ),
        ("rudder_fast_live_producers", "Producer processes writing to the spool.", s.live_producers),
    ):
        if value is not None:
            families.append((name, "gauge", help_text, _single(value)))
    families += [
        (
            "rudder_fast_requests_in_flight", "gauge",
            "Batches being delivered: posted, or waiting to be retried.", _single(s.requests_in_flight),
        ),
        (
            "rudder_fast_oldest_request_age_seconds", "gauge",
            "How long the oldest request to the data plane has waited for its answer (0: none waits).",
            _single(s.oldest_request_age_s),
        ),
        ("rudder_fast_sender_up", "gauge", "1 while the sender runs.", _single(1 if s.up else 0)),
        (
            "rudder_fast_sender_state", "gauge",
            "Delivery state of the sender: 1 for the current state, 0 for the others.",
            [({"state": state}, 1 if state == s.state else 0) for state in SENDER_STATES],
        ),
        (
            "rudder_fast_delivery_rate_events_per_second", "gauge",
            "Events delivered per second, averaged over the last minute.", _single(s.delivery_rate),
        ),
        (
            "rudder_fast_build_info", "gauge", "Version of rudder_fast the sender runs; always 1.",
            [({"version": s.version}, 1)],
        ),
    ]  # fmt: skip
    if s.data_planes:
        families += _data_plane_families(s.data_planes)
    return families


# -- the scrape endpoint ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every reply carries a Content-Length
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S
    server_version = "rudder-fast-metrics"

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True  # a request body is never read: it would garble the next request
        if urlsplit(self.path).path != METRICS_PATH:
            self._reply(404, b"not found: metrics are at /metrics\n", "text/plain; charset=utf-8", head)
            return
        provider = cast(_Server, self.server).provider
        try:
            body = provider()
            if not isinstance(body, bytes):
                raise TypeError(f"the metrics provider returned {type(body).__name__}, not bytes")
        except MetricsUnavailable as exc:
            log.debug("metrics not ready: %s", exc)
            self._reply(503, f"metrics not ready: {exc}\n".encode(), "text/plain; charset=utf-8", head)
            return
        except Exception as exc:
            log.exception("metrics provider failed")
            text = f"metrics unavailable: {type(exc).__name__}\n".encode()
            self._reply(500, text, "text/plain; charset=utf-8", head)
            return
        self._reply(200, body, CONTENT_TYPE, head)

    def _reply(self, code: int, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # listen backlog; with the default 5 a burst of connects waits on SYN retries

    def __init__(self, address: tuple[Any, ...], family: int, provider: Callable[[], bytes]) -> None:
        self.address_family = family
        self.provider = provider
        self._lock = threading.Lock()
        self._closing = False
        self._drained = threading.Condition(self._lock)
        self._connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN (a DNS look-up) for a name never used.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            closing = self._closing
            if not closing:
                self._connections.add(request)
        if closing:
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="rudder-fast-metrics-conn",
            daemon=True,
        )
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._lock:
            self._connections.discard(request)
            self._drained.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection (idle keep-alive ones included) and wait for their threads."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closing = True
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            while self._connections:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.debug("%d metrics connection(s) still open at close", len(self._connections))
                    return
                self._drained.wait(left)


class MetricsServer:
    """``GET /metrics`` answered with ``provider()``; 404 elsewhere; 503 if the provider raises
    :class:`MetricsUnavailable`, 500 (logged) if it raises anything else. The server goes on either way.

    Binds at construction (so a port in use fails at once, with OSError); :meth:`start` serves from a
    daemon thread; :meth:`close` stops serving and closes every connection. Port 0 picks a free port,
    which :attr:`port` then tells. Use :data:`DEFAULT_HOST` (loopback) unless the endpoint must be
    reachable from elsewhere.
    """

    def __init__(self, host: str, port: int, provider: Callable[[], bytes]) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {port}")
        family, _, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._server = _Server(address, family, provider)
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving" if self._thread else "bound"
        return f"<MetricsServer {self.url} {state}>"

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}{METRICS_PATH}"

    def start(self) -> None:
        if self._closed:
            raise RuntimeError("the metrics server is closed")
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            name="rudder-fast-metrics",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, close the socket and every open connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self._server.close_connections(CLOSE_WAIT_S)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- node-exporter's textfile collector -----------------------------------------------------------------


def write_textfile(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old file or the new one, never a part.

    Writes ``<path>.tmp`` in the same directory (the collector reads only ``*.prom``; a symlink planted
    there is replaced, never written through), then renames it over ``path``. Mode 0644 whatever the
    umask, so node-exporter can read it as another user. No fsync: the file is rewritten every few
    seconds and worth nothing after a crash.
    """
    safefile.replace(path, data, durable=False, mode=0o644)
