"""The transport's per-request deadline, against tiny real servers on 127.0.0.1.

urllib3's read timeout bounds each socket read, so an answer trickling in a byte at a time never trips
it; the transport's own deadline (connect + read timeout from the start of the request) must.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from rudder_fast.transport import Transport, TransportError

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Served:
    """What the server saw of each connection: bytes of the answer sent, and whether the client left."""

    sent: list[int] = field(default_factory=list)
    client_left: list[bool] = field(default_factory=list)
    accepted: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    done: threading.Event = field(default_factory=threading.Event)


def read_request(conn: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += conn.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += conn.recv(65536)


@contextlib.contextmanager
def server(*answers: Callable[[socket.socket, Served], None]) -> Iterator[tuple[int, Served]]:
    """Accepts one connection per answer, in order, each served by its own thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    served = Served()
    threads: list[threading.Thread] = []

    def handle(conn: socket.socket, answer: Callable[[socket.socket, Served], None]) -> None:
        with conn:
            read_request(conn)
            answer(conn, served)

    def serve() -> None:
        for answer in answers:
            conn, _ = listener.accept()
            served.accepted.release()
            thread = threading.Thread(target=handle, args=(conn, answer), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        served.done.set()

    main = threading.Thread(target=serve, daemon=True)
    main.start()
    try:
        yield listener.getsockname()[1], served
    finally:
        listener.close()
        main.join(30)
        assert not main.is_alive()


def trickle(interval: float) -> Callable[[socket.socket, Served], None]:
    """Send the answer one byte every ``interval`` seconds, stopping if the client goes away."""

    def answer(conn: socket.socket, served: Served) -> None:
        conn.settimeout(interval)
        for i in range(len(ANSWER)):
            try:
                if conn.recv(1) == b"":
                    served.sent.append(i)
                    served.client_left.append(True)
                    return
            except TimeoutError:
                pass
            except OSError:
                served.sent.append(i)
                served.client_left.append(True)
                return
            try:
                conn.sendall(ANSWER[i : i + 1])
            except OSError:
                served.sent.append(i)
                served.client_left.append(True)
                return
        served.sent.append(len(ANSWER))
        served.client_left.append(False)

    return answer


def test_an_answer_trickling_past_the_deadline_fails_the_request() -> None:
    # 0.25 s between bytes never trips the 1 s read timeout; the whole answer would take ~16 s.
    with server(trickle(0.25)) as (port, served):
        transport = Transport(f"http://127.0.0.1:{port}", "key", connect_timeout=0.5, read_timeout=1.0)
        try:
            with pytest.raises(TransportError, match=r"no complete answer within 1\.5 s"):
                transport.post(b'{"batch": []}')
            assert served.done.wait(30)
        finally:
            transport.close()
    assert served.client_left == [True]
    assert 0 < served.sent[0] < len(ANSWER)


def test_a_slow_but_complete_answer_within_the_deadline_is_kept() -> None:
    def late(conn: socket.socket, served: Served) -> None:
        time.sleep(0.3)
        conn.sendall(ANSWER)
        served.sent.append(len(ANSWER))

    with server(late) as (port, _):
        transport = Transport(f"http://127.0.0.1:{port}", "key", connect_timeout=1.0, read_timeout=2.0)
        try:
            resp = transport.post(b'{"batch": []}')
        finally:
            transport.close()
    assert (resp.status, resp.body) == (200, "ok")


def test_a_deadline_ends_only_its_own_request() -> None:
    """Two requests at once on one transport: the trickled one fails, the prompt one is answered."""

    def prompt(conn: socket.socket, served: Served) -> None:
        conn.sendall(ANSWER)

    with server(trickle(0.25), prompt) as (port, served):
        transport = Transport(f"http://127.0.0.1:{port}", "key", connect_timeout=0.5, read_timeout=1.0)
        outcome: list[BaseException | int] = []

        def post_slow() -> None:
            try:
                outcome.append(transport.post(b"{}").status)
            except TransportError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=post_slow)
        thread.start()
        try:
            assert served.accepted.acquire(timeout=30)  # the slow request holds the first connection
            assert transport.post(b"{}").status == 200
            thread.join(30)
            assert isinstance(outcome[0], TransportError), outcome
        finally:
            transport.close()


def test_a_request_after_an_answered_one_is_still_cut_at_its_deadline() -> None:
    """The watchdog is woken only for a deadline earlier than the one it sleeps until: a later request's
    deadline is found when it wakes for the earlier one, and enforced."""

    def prompt(conn: socket.socket, served: Served) -> None:
        conn.sendall(ANSWER)

    with server(prompt, trickle(0.25)) as (port, served):
        transport = Transport(f"http://127.0.0.1:{port}", "key", connect_timeout=0.5, read_timeout=1.0)
        try:
            assert transport.post(b"{}").status == 200
            transport.drop_idle()  # the second request on a new connection: the trickling one
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"no complete answer within 1\.5 s"):
                transport.post(b"{}")
            assert time.monotonic() - started < 5.0  # the trickle alone would take ~16 s
            assert served.done.wait(30)
        finally:
            transport.close()
    assert served.client_left[-1] is True
