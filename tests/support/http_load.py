"""A bounded HTTP load against an app server under test (gunicorn, uWSGI): a few keep-alive clients,
every request answered or the test fails; never a retry, which could record an event twice."""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.processes import HOST


def wait_http(
    port: int, proc: subprocess.Popen[bytes], path: str, timeout: float, log: Callable[[], str]
) -> bytes:
    """GET ``path`` until it answers 200 (the server is up); fail early if the server exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before serving:\n{log()}")
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200:
                return body
            last = f"HTTP {resp.status}"
        except OSError as exc:
            last = repr(exc)
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"server on port {port} not ready within {timeout} s ({last}):\n{log()}")
        time.sleep(0.05)


@dataclass
class Reply:
    n: int
    message_id: str
    pid: int
    hooks: int


@dataclass
class _Load:
    """What the client threads share: the next request number, the replies, the first errors."""

    port: int
    total: int
    deadline: float
    timeout: float
    reconnect_every: int
    query: Callable[[int], str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_n: int = 0
    replies: list[Reply] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def take(self) -> int | None:
        """The next request number, or None when all are taken (or the deadline passed)."""
        with self.lock:
            n = self.next_n
            if n >= self.total:
                return None
            self.next_n = n + 1
        if time.monotonic() > self.deadline:
            self.errors.append(f"deadline of {self.timeout} s reached at request {n}")
            return None
        return n

    def client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        on_conn = 0
        try:
            while not self.errors and (n := self.take()) is not None:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=15)
                    on_conn = 0
                conn.request("GET", f"/track?n={n}{self.query(n)}")
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status != 200:
                    self.errors.append(f"request {n}: HTTP {resp.status} {body[:200]}")
                    return
                mid, pid, hooks = body.split()
                with self.lock:
                    self.replies.append(Reply(n, mid, int(pid), int(hooks)))
                on_conn += 1
                if resp.will_close or on_conn >= self.reconnect_every:
                    conn.close()
                    conn = None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.errors.append(f"client error: {exc!r}")
        finally:
            if conn is not None:
                conn.close()


def http_load(
    port: int,
    total: int,
    *,
    threads: int = 4,
    timeout: float = 90.0,
    reconnect_every: int = 25,
    query: Callable[[int], str] = lambda n: "",
) -> list[Reply]:
    """Send ``total`` GET requests from ``threads`` keep-alive clients (a new connection every
    ``reconnect_every`` requests, so the load spreads over the workers). Never retries a request (a
    retry could record an event twice); any error or the deadline fails the test."""
    load = _Load(port, total, time.monotonic() + timeout, timeout, reconnect_every, query)
    workers = [threading.Thread(target=load.client, name=f"http-load-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(max(0.0, load.deadline - time.monotonic()) + 20)
    assert not any(t.is_alive() for t in workers), "HTTP clients still running after the deadline"
    assert not load.errors, load.errors[:5]
    assert len(load.replies) == total, (len(load.replies), total)
    return load.replies
