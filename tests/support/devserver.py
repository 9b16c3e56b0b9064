"""The real ``rudder-fast devserver`` in a subprocess, on 127.0.0.1 only, and what it received.

:meth:`DevServer.start` runs ``rudder-fast devserver --port 0 --quiet`` and reads the port from its
first line (``listening on http://127.0.0.1:PORT``); with ``out`` every accepted event is appended to
that file as one JSON line, which :meth:`DevServer.received` and :class:`OutTail` read back. Fault
switches go through ``POST /_control`` (:meth:`DevServer.control`), counters come from ``GET /_stats``.
The benchmarks use the same class.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import select
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from tests.support.processes import HOST, console_script, stop_process

START_TIMEOUT_S = 20.0

# Never through a proxy: the devserver is on the loopback interface.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class DevServer:
    proc: subprocess.Popen[bytes]
    port: int
    out: Path | None
    cafile: Path | None = None  # HTTPS with this certificate (self-signed: it is its own CA), or HTTP

    @classmethod
    def start(
        cls,
        *,
        out: Path | None,
        stderr: Path | IO[bytes],
        write_keys: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        timeout: float = START_TIMEOUT_S,
        tls: tuple[Path, Path] | None = None,
    ) -> DevServer:
        """Start a devserver on a free port (any non-empty write key is valid unless ``write_keys``);
        with ``tls`` (certificate, key: PEM files), it serves HTTPS."""
        cmd = [console_script("rudder-fast"), "devserver", "--port", "0", "--quiet"]
        if out is not None:
            cmd += ["--out", str(out)]
        for key in write_keys:
            cmd += ["--write-key", key]
        cmd += list(extra_args)
        if tls is not None:
            cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        if isinstance(stderr, Path):
            with open(stderr, "ab") as log:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        else:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
        try:
            line = _read_first_line(proc, timeout)
            prefix = f"listening on {'https' if tls else 'http'}://{HOST}:"
            assert line.startswith(prefix), line
            port = int(line[len(prefix) :])
        except BaseException:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()
            raise
        return cls(proc, port, out, tls[0] if tls else None)

    def __enter__(self) -> DevServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def out_path(self) -> Path:
        """The ``--out`` file (this devserver must have been started with one)."""
        assert self.out is not None, "this devserver was started without --out"
        return self.out

    @property
    def url(self) -> str:
        """The data plane's base URL (without ``/v1/batch``)."""
        return f"{'https' if self.cafile else 'http'}://{HOST}:{self.port}"

    def _request(self, path: str, data: bytes | None = None, timeout: float = 5.0) -> bytes:
        # (S310: the URL is always the devserver's own http or https one.)
        req = urllib.request.Request(f"{self.url}{path}", data=data, method="GET")  # noqa: S310
        if data is not None:
            req.method = "POST"
            req.add_header("Content-Type", "application/json")
        opener = _OPENER
        if self.cafile is not None:
            tls = urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(self.cafile)))
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), tls)
        with opener.open(req, timeout=timeout) as resp:
            body: bytes = resp.read()
            assert resp.status == 200, (resp.status, body)
            return body

    def control(self, cmd: dict[str, Any]) -> None:
        """Set fault switches (``POST /_control``).

        ``down_for`` closes the port, possibly before the answer to this very request is written: then
        the request counts as done if the port is closed right after.
        """
        try:
            self._request("/_control", json.dumps(cmd).encode())
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError):
            if "down_for" not in cmd:
                raise

    def stats(self) -> dict[str, Any]:
        """``GET /_stats``: requests, events, by_status, gzip_requests, plain_requests."""
        result: dict[str, Any] = json.loads(self._request("/_stats"))
        return result

    def try_stats(self) -> dict[str, Any] | None:
        """Like :meth:`stats`, but None while the port is closed (``down_for``)."""
        try:
            return self.stats()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def received(self) -> list[dict[str, Any]]:
        """Every accepted event so far, in order (complete lines of ``--out`` only)."""
        assert self.out is not None, "this devserver was started without --out"
        if not self.out.exists():
            return []
        data = self.out.read_bytes()
        end = data.rfind(b"\n")
        return [orjson.loads(line) for line in data[: end + 1].splitlines() if line.strip()]

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _read_first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"devserver printed no first line within {timeout} s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"devserver exited before listening (rc={proc.wait(5)}, out={buf!r})")
        buf += chunk
    return buf.split(b"\n", 1)[0].decode()


class OutTail:
    """Reads the devserver's ``--out`` JSON lines incrementally: only complete lines, each once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: dict[str, dict[str, Any]] = {}
        self.total = 0

    def poll(self) -> int:
        """Read what was appended since the last call; the number of new events."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        self.offset += end + 1
        new = 0
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            event = orjson.loads(line)
            mid = event["messageId"]
            self.counts[mid] += 1
            self.events.setdefault(mid, event)
            new += 1
        self.total += new
        return new

    @property
    def ids(self) -> set[str]:
        return set(self.counts)

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first of each messageId."""
        return self.total - len(self.counts)
