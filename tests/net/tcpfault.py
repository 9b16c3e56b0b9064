"""A TCP fault relay for HTTP/1.1: the data plane as a misbehaving load balancer would present it.

Run as ``python -m tests.net.tcpfault --listen 0.0.0.0:0 --upstream 127.0.0.1:PORT --control PATH``;
it prints ``ready <port>``. Each client connection gets its own upstream connection (opened on its first
request) and its own thread. The relay reads one whole request (headers, then ``Content-Length`` bytes),
takes the mode in force at that moment, and acts on that request only:

=========  ===================================================================================
pass       forward the request, return the whole answer
reset      forward the request (the upstream stores it), return the first ``reset_after`` bytes
           of the answer, then close with SO_LINGER 0: the client sees a TCP RST mid-response
never      accept the request and never answer: neither forwarded nor closed by the relay
trickle    forward the request, return the answer one byte every ``trickle_s`` seconds
=========  ===================================================================================

Control commands (JSON lines on the UNIX socket, see :mod:`tests.net.control`)::

    {"mode": "trickle"}        {"reset_after": 12}        {"trickle_s": 1.0}
    {"drop_all": true}         reset every client connection now (a load balancer restarting)
    {"since": 0}               the log of exchanges from this index on
    {"after_request": {"socket": PATH, "command": {...}}}
                               once the next request is forwarded whole to the upstream (which will
                               store it), send ``command`` to the helper at ``PATH`` (e.g. the IP
                               relay's ``{"blackhole": true}``) before reading the upstream's answer;
                               the state's ``fired`` is then when it was sent

The trigger makes "the wire is cut while the data plane holds a request" an event, not a race: the
command has taken effect before the answer exists for the relay, so that answer is lost on the way back.

Every exchange is logged with wall-clock times: when the request was complete, and when it ended —
the answer fully sent, the reset sent, or the client giving up (closing its side). ``wait_s`` is how
long the client waited on that request: the measure of "no request hung beyond its timeouts".
"""

from __future__ import annotations

import argparse
import contextlib
import select
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from tests.net import control
from tests.net.control import LineServer, die_with_parent

MODES = ("pass", "reset", "never", "trickle")
POLL_S = 0.05  # how often a blocked connection thread looks at drop_all and at the client
MAX_HEAD = 64 * 1024
MAX_LOG = 20_000


class Gone(Exception):
    """The peer closed or reset the connection, or the connection was dropped by command."""


@dataclass
class Exchange:
    id: int
    conn: int
    mode: str
    t_request: float
    t_end: float | None = None
    outcome: str = "open"  # answered / reset / client_closed / dropped / upstream_closed
    sent: int = 0

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["wait_s"] = None if self.t_end is None else self.t_end - self.t_request
        return doc


class Conn:
    """One client connection: its socket, unread bytes, and whether it must be dropped."""

    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.id = conn_id
        self.buf = b""
        self.drop = threading.Event()

    def wait_readable(self, sock: socket.socket, timeout: float | None = None) -> bool:
        """True once ``sock`` is readable; False at ``timeout``; :class:`Gone` if dropped meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.drop.is_set():
                raise Gone("dropped")
            step = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if step <= 0:
                return False
            if select.select([sock], [], [], step)[0]:
                return True

    def client_gone(self) -> bool:
        """Non-blocking: has the client closed or reset its side?"""
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            data = self.sock.recv(1 << 16, socket.MSG_PEEK)
        except OSError:
            return True
        return not data


def read_message(conn: Conn, sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """One HTTP/1.1 message (head and ``Content-Length`` body) from ``sock``: (message, leftover)."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise Gone("head too large")
        conn.wait_readable(sock)
        try:
            chunk = sock.recv(1 << 16)
        except OSError as exc:
            raise Gone(str(exc)) from None
        if not chunk:
            raise Gone("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        conn.wait_readable(sock)
        try:
            chunk = sock.recv(1 << 16)
        except OSError as exc:
            raise Gone(str(exc)) from None
        if not chunk:
            raise Gone("closed mid-body")
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultRelay:
    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.reset_after = 12
        self.trickle_s = 1.0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(listen)
        self.listener.listen(128)
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: dict[int, Conn] = {}
        self._log: list[Exchange] = []
        self._next_conn = 0
        self._trigger: dict[str, Any] | None = None  # after_request, until it fires
        self._fired: float | None = None
        self.stopping = threading.Event()

    # -- control ---------------------------------------------------------------------------------------

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if "mode" in cmd:
            if cmd["mode"] not in MODES:
                raise ValueError(f"mode must be one of {MODES}")
            self.mode = cmd["mode"]
        if "reset_after" in cmd:
            self.reset_after = int(cmd["reset_after"])
        if "trickle_s" in cmd:
            self.trickle_s = float(cmd["trickle_s"])
        with self._lock:
            if "after_request" in cmd:
                self._trigger, self._fired = dict(cmd["after_request"]), None
            if cmd.get("drop_all"):
                for conn in self._conns.values():
                    conn.drop.set()
            since = int(cmd.get("since", len(self._log)))
            return {
                "mode": self.mode,
                "connections": len(self._conns),
                "open": sum(1 for ex in self._log if ex.t_end is None),
                "count": len(self._log),
                "fired": self._fired,
                "exchanges": [ex.to_json() for ex in self._log[since:]],
            }

    def _record(self, conn: Conn, mode: str) -> Exchange:
        with self._lock:
            ex = Exchange(id=len(self._log), conn=conn.id, mode=mode, t_request=time.time())
            if len(self._log) < MAX_LOG:
                self._log.append(ex)
            return ex

    def _end(self, ex: Exchange, outcome: str) -> None:
        with self._lock:
            if ex.t_end is None:
                ex.t_end = time.time()
                ex.outcome = outcome

    # -- serving ---------------------------------------------------------------------------------------

    def serve(self) -> None:
        while not self.stopping.is_set():
            if not select.select([self.listener], [], [], 0.2)[0]:
                continue
            sock, _ = self.listener.accept()
            with self._lock:
                self._next_conn += 1
                conn = Conn(sock, self._next_conn)
                self._conns[conn.id] = conn
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()

    def _serve_conn(self, conn: Conn) -> None:
        upstream: socket.socket | None = None
        up_buf = b""
        ex: Exchange | None = None
        try:
            while True:
                ex = None
                request, conn.buf = read_message(conn, conn.sock, conn.buf)
                mode = self.mode
                ex = self._record(conn, mode)
                if mode == "never":
                    self._await_client_close(conn, ex)
                    return
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=30)
                got = self._ask_upstream(conn, ex, upstream, request, up_buf)
                if got is None:
                    return
                answer, up_buf = got
                if not self._answer(conn, ex, mode, answer):
                    return
        except Gone as exc:
            if ex is not None:
                self._end(ex, "dropped" if str(exc) == "dropped" else "client_closed")
            if conn.drop.is_set():
                rst_close(conn.sock)
        finally:
            with self._lock:
                self._conns.pop(conn.id, None)
            with contextlib.suppress(OSError):
                conn.sock.close()
            if upstream is not None:
                upstream.close()

    def _ask_upstream(
        self, conn: Conn, ex: Exchange, upstream: socket.socket, request: bytes, up_buf: bytes
    ) -> tuple[bytes, bytes] | None:
        """The data plane's answer to ``request`` (and the bytes after it); None if it closed first."""
        try:
            upstream.sendall(request)
            self._fire()
            return read_message(conn, upstream, up_buf)
        except Gone as exc:
            if str(exc) == "dropped":
                raise
            self._end(ex, "upstream_closed")
            return None

    def _fire(self) -> None:
        """Send the armed ``after_request`` command, once (the request was just forwarded whole)."""
        with self._lock:
            trigger, self._trigger = self._trigger, None
        if trigger is None:
            return
        control.request(str(trigger["socket"]), dict(trigger["command"]))
        with self._lock:
            self._fired = time.time()

    def _answer(self, conn: Conn, ex: Exchange, mode: str, answer: bytes) -> bool:
        """Give the client the data plane's answer as ``mode`` says; False once the connection is over."""
        if mode == "reset":
            with contextlib.suppress(OSError):
                conn.sock.sendall(answer[: self.reset_after])
            ex.sent = min(len(answer), self.reset_after)
            self._end(ex, "reset")
            rst_close(conn.sock)
            return False
        if mode == "trickle":
            self._trickle(conn, ex, answer)
            return ex.outcome == "answered"
        try:
            conn.sock.sendall(answer)
        except OSError:
            self._end(ex, "client_closed")
            return False
        ex.sent = len(answer)
        self._end(ex, "answered")
        return True

    def _await_client_close(self, conn: Conn, ex: Exchange) -> None:
        while not self.stopping.is_set():
            conn.wait_readable(conn.sock)
            if conn.client_gone():
                self._end(ex, "client_closed")
                return
            with contextlib.suppress(OSError):
                conn.sock.recv(1 << 16)  # more bytes from the client: swallowed too

    def _trickle(self, conn: Conn, ex: Exchange, answer: bytes) -> None:
        for i in range(len(answer)):
            if conn.wait_readable(conn.sock, self.trickle_s) and conn.client_gone():
                self._end(ex, "client_closed")
                return
            try:
                conn.sock.sendall(answer[i : i + 1])
            except OSError:
                self._end(ex, "client_closed")
                return
            ex.sent = i + 1
        self._end(ex, "answered")


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--listen", type=_addr, required=True, help="HOST:PORT (port 0: any)")
    p.add_argument("--upstream", type=_addr, required=True, help="HOST:PORT of the devserver")
    p.add_argument("--control", required=True, help="path of the control UNIX socket")
    args = p.parse_args(argv)
    die_with_parent()
    relay = FaultRelay(args.listen, args.upstream)
    control = LineServer(args.control, relay.command)

    def control_loop() -> None:
        while not relay.stopping.is_set():
            for fd in select.select(control.fds(), [], [], 0.2)[0]:
                control.ready(fd)

    signal.signal(signal.SIGTERM, lambda *_: relay.stopping.set())
    threading.Thread(target=control_loop, daemon=True).start()
    print(f"ready {relay.port}", flush=True)
    try:
        relay.serve()
    finally:
        control.close()
        relay.listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
