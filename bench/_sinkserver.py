"""A stand-in data plane for the benchmarks: answers 200 ``ok`` to ``POST /v1/batch`` on 127.0.0.1.

It reads the whole body (gunzipping it when the request says so), counts the batch's events and answers
at once, with HTTP/1.1 keep-alive, so a client's cost is its own and not the server's. ``GET /stats``
returns the counts as JSON.

Run it in a subprocess (what ``bench/emit.py`` does: the server's work then does not compete for the
measured process's GIL) with :class:`SinkServer`, or in a thread with :func:`serve_in_thread`. As a
script it prints ``PORT <n>`` on stdout once it listens and serves until it gets SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

BATCH_PATH = "/v1/batch"
STATS_PATH = "/stats"


class SinkStats:
    """Counters shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.events = 0
        self.body_bytes = 0
        self.bad_bodies = 0

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "requests": self.requests,
                "events": self.events,
                "body_bytes": self.body_bytes,
                "bad_bodies": self.bad_bodies,
            }


class SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real data plane offers
    # The answer goes out as two writes (headers, body): with Nagle on, the second waits for the client's
    # delayed ACK, and every request would take ~40 ms.
    disable_nagle_algorithm = True
    server: SinkHTTPServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.split("?", 1)[0] != BATCH_PATH:
            self._answer(404, b"not found")
            return
        events = 0
        bad = 0
        try:
            if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                body_json: Any = json.loads(gzip.decompress(body))
            else:
                body_json = json.loads(body)
            batch = body_json.get("batch") if isinstance(body_json, dict) else None
            if isinstance(batch, list):
                events = len(batch)
            else:
                bad = 1
        except (OSError, ValueError, EOFError):
            bad = 1
        stats = self.server.stats
        with stats.lock:
            stats.requests += 1
            stats.events += events
            stats.body_bytes += length
            stats.bad_bodies += bad
        self._answer(200, b"ok")

    def do_GET(self) -> None:
        if self.path == STATS_PATH:
            self._answer(200, json.dumps(self.server.stats.snapshot()).encode(), "application/json")
        else:
            self._answer(404, b"not found")

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise
        return


class SinkHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), SinkHandler)
        self.stats = SinkStats()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def serve_in_thread(port: int = 0) -> tuple[SinkHTTPServer, threading.Thread]:
    """Start a sink in a daemon thread of this process; stop it with ``server.shutdown()``."""
    server = SinkHTTPServer(port)
    thread = threading.Thread(target=server.serve_forever, name="sink-server", daemon=True)
    thread.start()
    return server, thread


class SinkServer:
    """The sink in a subprocess (a context manager): ``url``, ``stats()``, ``close()``."""

    def __init__(self, startup_timeout_s: float = 10.0) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self._proc.stdout is not None
        line = ""
        timer = threading.Timer(startup_timeout_s, self._proc.kill)
        timer.start()
        try:
            line = self._proc.stdout.readline()
        finally:
            timer.cancel()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"sink server did not start (got {line!r})")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url + STATS_PATH, timeout=5) as resp:  # noqa: S310 - http://127.0.0.1
            data: dict[str, int] = json.loads(resp.read())
        return data

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> SinkServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    args = parser.parse_args(argv)
    server = SinkHTTPServer(args.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it must run outside the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
