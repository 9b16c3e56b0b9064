"""``rudder-fast devserver``: a local stand-in for the RudderStack data plane's ``POST /v1/batch``.

It answers exactly as docs/wire.md describes the real gateway (rudder-server v1.83): HTTP Basic auth with
the write key as user name, gzip only with ``Content-Encoding: gzip``, validation in the gateway's order
with plain-text bodies, the size limit on the decompressed body, and nothing stored on any 4xx.
Accepted events are appended to ``--out`` as JSON lines (the event as received plus ``receivedAt``).

Fault switches, for tests and demos, set by options at start or at run time by ``POST /_control``
with a JSON object (loopback only; not part of the real data plane)::

    {"fail_status": 503, "fail_for": 3.0}   answer this status to every batch for 3 s
    {"down_for": 2.0}                       close the port (connection refused) for 2 s
    {"max_body": 100000}                    lower the size limit (decompressed bytes)
    {"poison_user_id": "bad"}               400 for any batch holding an event with this userId
    {"latency_ms": 50}                      wait before answering
    {"disabled": true}                      404 source is disabled
    {"retry_after": "5"}                    send this Retry-After header with fail_status answers
                                            (the gateway sends none; a proxy in front of it may)
    {"stall_user_id": "slow"}               hold any batch holding an event with this userId until the
                                            switch is cleared (or 10 min), then answer 503: never stored

``GET /_stats`` returns the counts as JSON.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import http.server
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

from . import gcpolicy
from .compression import gunzip
from .events import is_blank

MAX_BODY: Final = 4_096_000  # the gateway's maxReqSizeInKB = 4000
# rudder-server gateway/gateway.go ``extractEvent``, ``rETLEvent``: event types that need no id.
_NO_ID_TYPES: Final = ("extract", "record")


@dataclass
class Faults:
    fail_status: int | None = None
    fail_until: float = 0.0
    max_body: int = MAX_BODY
    poison_user_id: str | None = None
    latency_s: float = 0.0
    disabled: bool = False
    retry_after: str | None = None
    stall_user_id: str | None = None


@dataclass
class Stats:
    requests: int = 0
    events: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    gzip_requests: int = 0
    plain_requests: int = 0
    stalled: int = 0  # requests held by the stall switch


def blank(value: Any) -> bool:
    """The gateway's test for a missing id (rudder-server ``gateway/handle.go``,
    ``getJobDataFromRequest``: ``strings.TrimSpace(sanitize.Unicode(stringify.Any(id)))`` is empty).

    ``stringify.Any`` turns null into "" and any other non-string into its JSON text, never blank.
    rudder-go-kit's ``sanitize.Unicode`` deletes every rune that Go's ``unicode.IsPrint`` refuses (the
    Unicode categories C and Z but the ASCII space — the same set as Python's ``str.isprintable``) and
    the runes of its own list of "invisible" ones, some of them printable letters; what is left is blank
    if it is only spaces.
    """
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    return is_blank(value)


def _batch_events(doc: Any) -> list[Any]:
    """The events of a parsed body as the gateway sees them: ``gjson.GetBytes(body, "batch").Array()``
    (rudder-server ``gateway/handle.go``, ``getJobDataFromRequest``). gjson's ``Array()`` gives no
    events for a missing or null ``batch``, the elements of an array, and a one-element list for any
    other value: an object is then one event, and a string (``{"batch": "[...]"}``) one event that is
    not an object."""
    batch = doc.get("batch") if isinstance(doc, dict) else None
    if batch is None:
        return []
    if isinstance(batch, list):
        return batch
    return [batch]


def validate_batch(body: bytes, max_body: int) -> tuple[int, str, list[dict[str, Any]]]:
    """(status, answer, events) for a decompressed body, in the gateway's order of checks.

    rudder-server ``gateway/handle.go``, ``getJobDataFromRequest``: invalid JSON; then event by event,
    an element that is not an object, or one with neither id (events of type ``extract`` and ``record``
    need none, ``isNonIdentifiable``); then the size; and only then, in
    ``userWebRequestWorkerProcess``, a batch that produced no event.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 400, "invalid json", []
    events = _batch_events(doc)
    for event in events:
        if type(event) is not dict:
            return 400, "event is not a valid rudder event", []
        uid = event.get("userId")
        if type(uid) is str and uid and "!" <= uid[0] <= "~":
            continue  # the common case, decided without the full blank test
        if event.get("type") in _NO_ID_TYPES:
            continue
        if blank(event.get("anonymousId")) and blank(uid):
            return 400, "request neither has anonymousId nor userId", []
    if len(body) > max_body:
        return 413, "request size exceeds max limit", []
    if not events:
        return 400, "empty batch payload", []
    return 200, "ok", events


def _names(events: list[dict[str, Any]], user_id: str | None) -> bool:
    """Whether a fault switch naming ``user_id`` applies to this batch."""
    return user_id is not None and any(e.get("userId") == user_id for e in events)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


# The control switches set as given (or parsed): name -> parser.
_FAULT_SWITCHES: Final[dict[str, Callable[[Any], Any]]] = {
    "poison_user_id": _optional_str,
    "stall_user_id": _optional_str,
    "retry_after": _optional_str,
    "disabled": bool,
}


class DevServer:
    def __init__(
        self,
        host: str,
        port: int,
        write_keys: Sequence[str],
        *,
        out: Path | None,
        faults: Faults,
        quiet: bool = False,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.write_keys = set(write_keys)
        self.faults = faults
        self.stats = Stats()
        self.quiet = quiet
        self._lock = threading.Lock()
        self._out: IO[bytes] | None = open(out, "ab") if out else None  # noqa: SIM115
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)

    # serving

    def start(self) -> None:
        server = self

        class Handler(_Handler):
            dev = server

        httpd = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        httpd.daemon_threads = True
        if self._tls is not None:
            httpd.socket = self._tls.wrap_socket(httpd.socket, server_side=True)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()

    def stop_listening(self) -> None:
        httpd = self._httpd
        if httpd is None:
            return
        self._httpd = None
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def go_down(self, seconds: float) -> None:
        def run() -> None:
            self.stop_listening()
            if self._stopped.wait(seconds):
                return
            deadline = time.monotonic() + 10
            while True:
                try:
                    self.start()
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

        threading.Thread(target=run, daemon=True).start()

    def schedule_down(self, *, after: float, seconds: float) -> None:
        """Close the port ``after`` seconds from now, for ``seconds``."""

        def run() -> None:
            if not self._stopped.wait(after):
                self.go_down(seconds)

        threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        self._stopped.set()
        self.stop_listening()
        if self._out is not None:
            self._out.close()
            self._out = None

    # request handling

    def check_auth(self, header: str | None) -> tuple[int, str] | None:
        """rudder-server ``gateway/handle_http_auth.go``, ``writeKeyAuth``: ``r.BasicAuth()``, whose
        ``parseBasicAuth`` (Go ``net/http/request.go``) matches the ``Basic `` prefix in any letter case
        (``basic``, ``BASIC``), then decodes the rest as padded standard base64 with nothing stripped,
        and splits at the first colon; an empty user name is a missing key too."""
        prefix = "Basic "
        if not header or len(header) < len(prefix) or header[: len(prefix)].lower() != prefix.lower():
            return 401, "failed to read writekey from header"
        try:
            decoded = base64.b64decode(header[len(prefix) :], validate=True)
        except (binascii.Error, ValueError):
            return 401, "failed to read writekey from header"
        key, sep, _ = decoded.decode("utf-8", "surrogateescape").partition(":")
        if not sep or not key:
            return 401, "failed to read writekey from header"
        if self.write_keys and key not in self.write_keys:
            return 401, "invalid write key"
        return None

    def handle_batch(self, headers: Any, raw: bytes, complete: bool = True) -> tuple[int, str]:
        """The answer to one ``POST /v1/batch``; ``complete`` is False when the client closed before
        sending ``Content-Length`` bytes (Go's body reader then fails with io.ErrUnexpectedEOF)."""
        faults = self.faults
        if faults.latency_s:
            time.sleep(faults.latency_s)
        refused = self._refusal(headers, complete)
        if refused is not None:
            return refused
        # rudder-server middleware/uncompress.go: exactly "gzip" (the first such header), else as is.
        gz = headers.get("Content-Encoding") == "gzip"
        if gz:
            try:
                body = gunzip(raw)
            except zlib.error:
                return 500, "failed to read body from request"
        else:
            body = raw
        status, answer, events = validate_batch(body, faults.max_body)
        if status != 200:
            return status, answer
        stall = faults.stall_user_id
        if stall is not None and _names(events, stall):
            return self._stall(stall)
        if _names(events, faults.poison_user_id):
            return 400, "request neither has anonymousId nor userId"
        self._store(events, gz)
        return 200, "ok"

    def _refusal(self, headers: Any, complete: bool) -> tuple[int, str] | None:
        """What the gateway answers before it reads the body: auth, the source, the fault switches."""
        faults = self.faults
        refused = self.check_auth(headers.get("Authorization"))
        if refused is not None:
            return refused
        if faults.disabled:
            return 404, "source is disabled"
        if faults.fail_status is not None and time.time() < faults.fail_until:
            return faults.fail_status, _reason(faults.fail_status)
        if not complete:
            return 500, "failed to read body from request"  # gateway/handle.go getPayloadFromRequest
        return None

    def _store(self, events: list[dict[str, Any]], gz: bool) -> None:
        lines = []
        if self._out is not None:
            received = _iso_now()
            for event in events:
                event["receivedAt"] = received
                lines.append(orjson.dumps(event))
        with self._lock:
            self.stats.events += len(events)
            if gz:
                self.stats.gzip_requests += 1
            else:
                self.stats.plain_requests += 1
            if self._out is not None:
                self._out.write(b"\n".join(lines) + b"\n")
                self._out.flush()

    def _stall(self, user_id: str) -> tuple[int, str]:
        """Hold this request while the stall switch names ``user_id``, then refuse it, storing nothing:
        a client that died meanwhile must find its events again, not see them stored behind its back."""
        with self._lock:
            self.stats.stalled += 1
        deadline = time.monotonic() + 600
        while self.faults.stall_user_id == user_id and time.monotonic() < deadline:
            if self._stopped.wait(0.05):
                break
        return 503, "service unavailable"

    def control(self, body: bytes) -> tuple[int, str]:
        try:
            cmd = orjson.loads(body)
            if not isinstance(cmd, dict):
                raise ValueError("not an object")
        except (orjson.JSONDecodeError, ValueError) as exc:
            return 400, f"bad control request: {exc}"
        f = self.faults
        if "fail_status" in cmd:
            f.fail_status = cmd["fail_status"]
            f.fail_until = time.time() + float(cmd.get("fail_for", 3600))
        if "max_body" in cmd:
            f.max_body = int(cmd["max_body"]) if cmd["max_body"] else MAX_BODY
        for key, parse in _FAULT_SWITCHES.items():
            if key in cmd:
                setattr(f, key, parse(cmd[key]))
        if "latency_ms" in cmd:
            f.latency_s = float(cmd["latency_ms"]) / 1000
        if "write_keys" in cmd:
            self.write_keys = set(cmd["write_keys"])
        if "down_for" in cmd:
            self.go_down(float(cmd["down_for"]))
        return 200, "ok"

    def record(self, status: int) -> None:
        with self._lock:
            self.stats.requests += 1
            key = str(status)
            self.stats.by_status[key] = self.stats.by_status.get(key, 0) + 1

    def stats_json(self) -> bytes:
        with self._lock:
            s = self.stats
            return orjson.dumps(
                {
                    "requests": s.requests,
                    "events": s.events,
                    "by_status": s.by_status,
                    "gzip_requests": s.gzip_requests,
                    "plain_requests": s.plain_requests,
                    "stalled": s.stalled,
                }
            )


class _Handler(http.server.BaseHTTPRequestHandler):
    dev: DevServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the sender's pool expects
    # Headers and body go out in separate writes: without TCP_NODELAY the body waits ~40 ms for the
    # client's delayed ACK on every request.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        with self.dev._lock:
            self.dev._connections.add(self.connection)

    def finish(self) -> None:
        with self.dev._lock:
            self.dev._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _answer(
        self,
        status: int,
        text: str,
        content_type: str = "text/plain; charset=utf-8",
        retry_after: str | None = None,
    ) -> None:
        data = text.encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        raw = self._read_body()
        path = self.path.split("?", 1)[0]
        if path == "/_control":
            status, text = self.dev.control(raw)
            self._answer(status, text)
            return
        if path != "/v1/batch":
            self._answer(404, "404 page not found")
            return
        length = int(self.headers.get("Content-Length") or 0)
        status, text = self.dev.handle_batch(self.headers, raw, complete=len(raw) >= length)
        self.dev.record(status)
        if status == 200:
            self._answer(status, text)
        else:
            # The gateway answers errors with Go's http.Error: the text and a newline.
            faults = self.dev.faults
            retry_after = faults.retry_after if status == faults.fail_status else None
            self._answer(status, text + "\n", retry_after=retry_after)

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._answer(200, self.dev.stats_json().decode(), "application/json")
        elif self.path == "/health":
            self._answer(200, '{"server":"UP"}', "application/json")
        else:
            self._answer(404, "404 page not found")


def _reason(status: int) -> str:
    return {
        429: "max requests limit reached",
        500: "internal server error",
        503: "service unavailable",
        504: "gateway timeout",
    }.get(status, "error")


def _iso_now() -> str:
    ns = time.time_ns()
    t = time.gmtime(ns // 1_000_000_000)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
        f"{t.tm_sec:02d}.{(ns // 1_000_000) % 1000:03d}Z"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port; 0 picks a free one, printed at start (default: %(default)s)",
    )
    p.add_argument(
        "--write-key", action="append", default=[], metavar="KEY",
        help="a valid write key (repeatable); without one, any non-empty key is accepted",
    )  # fmt: skip
    p.add_argument("--out", type=Path, metavar="FILE", help="append each accepted event here, one JSON line")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this certificate (PEM)...")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="...and this private key (PEM)")
    p.add_argument("--fail-status", type=int, metavar="STATUS", help="answer this status to every batch...")
    p.add_argument(
        "--fail-for",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="...for this long (default: %(default)s)",
    )
    p.add_argument(
        "--max-body",
        type=int,
        default=MAX_BODY,
        metavar="BYTES",
        help="size limit, decompressed (default: %(default)s)",
    )
    p.add_argument(
        "--poison-user-id", metavar="ID", help="answer 400 to batches holding an event with this userId"
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="wait this long before each answer (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no live count on stderr")


def run(args: argparse.Namespace) -> int:
    faults = Faults(
        fail_status=args.fail_status,
        fail_until=time.time() + args.fail_for if args.fail_status else 0.0,
        max_body=args.max_body,
        poison_user_id=args.poison_user_id,
        latency_s=args.latency_ms / 1000,
    )
    if (args.tls_cert is None) != (args.tls_key is None):
        print("rudder-fast devserver: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    tls = (args.tls_cert, args.tls_key) if args.tls_cert is not None else None
    server = DevServer(
        args.host, args.port, args.write_key, out=args.out, faults=faults, quiet=args.quiet, tls=tls
    )
    server.start()
    gcpolicy.tune()  # a collection every 700 parsed objects cost a third of the validation: see gcpolicy
    scheme = "https" if tls else "http"
    print(f"listening on {scheme}://{args.host}:{server.port}", flush=True)
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    last = -1
    try:
        while not stop.wait(1.0):
            events = server.stats.events
            if not args.quiet and events != last:
                print(f"devserver: {events} events accepted, {server.stats.requests} requests",
                      file=sys.stderr, flush=True)  # fmt: skip
                last = events
    finally:
        server.close()
    return 0
