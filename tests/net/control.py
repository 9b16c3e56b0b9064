"""The control channel of the net kit's helper processes: one JSON object per line over a UNIX socket.

(Also their tie to the test: :func:`die_with_parent`, so a killed test run leaves no helper behind.)

Each helper (the IP relay, the TCP fault relay, the DNS responder) listens on a path in the test's
temporary directory; a test sends ``{"mode": "reset"}`` and reads back one JSON line describing the
helper's state. A pathname UNIX socket is reachable from every network namespace (it lives in the file
system, not in the network stack), so the test drives helpers inside the namespaces from the root one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[dict[str, Any]], dict[str, Any]]
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent (the test run) dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the request took effect
        sys.exit(1)


def request(path: str, cmd: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to the helper listening on ``path``; its answer (raises on an ``error``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(cmd or {}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"control socket {path} closed without an answer")
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    if "error" in answer:
        raise ValueError(f"control command {cmd} refused: {answer['error']}")
    return answer


class LineServer:
    """The helper's side, for a ``select`` loop: ``fds()`` to wait on, ``ready(fd)`` when one is readable.

    Commands are handled in the loop's own thread, so a handler may change the helper's state freely.
    """

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}

    def fds(self) -> list[int]:
        return [self.listener.fileno(), *self.clients]

    def ready(self, fd: int) -> None:
        if fd == self.listener.fileno():
            conn, _ = self.listener.accept()
            self.clients[conn.fileno()] = (conn, bytearray())
            return
        conn, buf = self.clients[fd]
        try:
            data = conn.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            del self.clients[fd]
            conn.close()
            return
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            try:
                cmd = json.loads(line or b"{}")
                if not isinstance(cmd, dict):
                    raise ValueError("a command is a JSON object")
                answer = self.handler(cmd)
            except (ValueError, TypeError, KeyError) as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        for conn, _ in self.clients.values():
            conn.close()
        self.clients.clear()
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
