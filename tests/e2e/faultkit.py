"""Helpers for the fault suites (quota, disk, garbage, churn), on top of :mod:`tests.e2e.conftest`.

Everything here runs the real thing: the ``rudder-fast`` console scripts, real files, real forked
producer processes. Every process started here is stopped here (producers by :class:`ProducerChild`'s
``stop`` and :func:`fork_wave`'s own deadline).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import select
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from rudder_fast.framing import FRAME_DROPS, FRAME_EVENT, Frame, Skip
from rudder_fast.tail import read_whole
from tests.e2e.conftest import RunningSender
from tests.support import console_script, wait_for

CHILD_REPLY_TIMEOUT_S = 60.0


# -- the data plane's absence --------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused): a data plane that is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- the toolbox, for real -----------------------------------------------------------------------------------


def status_json(spool_dir: Path, timeout: float = 60.0) -> dict[str, Any]:
    """``rudder-fast status --json`` for real."""
    proc = subprocess.run(
        [console_script("rudder-fast"), "status", "--json", "--spool-dir", str(spool_dir)],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    doc: dict[str, Any] = orjson.loads(proc.stdout)
    return doc


def dropped(doc: dict[str, Any], reason: str) -> int:
    return int(doc["counters"]["dropped"].get(reason, 0))


def wait_sender_ready(spool_dir: Path, sender: RunningSender, timeout: float = 30.0) -> None:
    """Until the sender has published its control file and a status snapshot (its loop is running)."""

    def ready() -> bool:
        assert sender.proc.poll() is None, f"sender exited ({sender.proc.returncode}):\n{sender.stderr()}"
        return (spool_dir / "control").exists() and (spool_dir / "status").exists()

    wait_for(ready, timeout=timeout)


# -- what is on disk -----------------------------------------------------------------------------------------


@dataclass
class SegmentDump:
    """One segment as :func:`rudder_fast.tail.read_whole` decodes it, without waiting on anything."""

    path: Path
    nonce: str
    events: list[Frame] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    leftover: int = 0  # bytes after the last whole frame that a live writer has not completed
    size: int = 0

    def message_id(self, frame: Frame) -> str:
        return f"{self.nonce}-{frame.seq}"


def dump_segment(path: Path) -> SegmentDump:
    import msgpack

    tail, items = read_whole(path)
    assert tail is not None, f"{path} vanished"
    try:
        dump = SegmentDump(path, tail.nonce, leftover=tail.decoder.buffered, size=tail.read_pos)
        for item in items:
            if isinstance(item, Skip):
                dump.skips.append(item)
            elif item.type == FRAME_EVENT:
                dump.events.append(item)
            elif item.type == FRAME_DROPS:
                for reason, n in msgpack.unpackb(item.payload).items():
                    dump.drops[reason] = dump.drops.get(reason, 0) + n
    finally:
        tail.close()
    return dump


def spool_files(spool_dir: Path, sub: str) -> list[Path]:
    d = spool_dir / sub
    return sorted(d.iterdir()) if d.exists() else []


# -- delivery checks -----------------------------------------------------------------------------------------


def assert_delivered_exactly(received: Iterable[dict[str, Any]], expected: Iterable[str]) -> None:
    """Every expected messageId arrived exactly once, and nothing else arrived."""
    counts = collections.Counter(e["messageId"] for e in received)
    want = set(expected)
    duplicates = {mid: n for mid, n in counts.items() if n > 1}
    missing = want - counts.keys()
    unexpected = counts.keys() - want
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert not unexpected, f"{len(unexpected)} unknown messageIds, e.g. {sorted(unexpected)[:5]}"
    assert not duplicates, f"{len(duplicates)} duplicated, e.g. {list(duplicates.items())[:5]}"


def assert_wire_event(event: dict[str, Any]) -> None:
    """A received event is a well-formed track event of ours (these suites' or ``fill_spool``'s), not
    garbage that happened to parse."""
    assert event.get("type") == "track", event
    assert event.get("event") in ("Fault Event", "E2E Event"), event
    assert isinstance(event.get("messageId"), str) and event["messageId"], event
    user_id, anonymous_id = event.get("userId"), event.get("anonymousId")
    assert (isinstance(user_id, str) and user_id.startswith("user-")) or (
        isinstance(anonymous_id, str) and anonymous_id.startswith("anon-")
    ), event
    assert event["context"]["library"]["name"] == "rudder-fast", event
    props = event.get("properties")
    assert isinstance(props, dict) and isinstance(props.get("n"), int), event


def track(emitter: Any, tag: str, n: int, pad: str = "") -> str | None:
    """The one call shape the fault suites use (checked on arrival by :func:`assert_wire_event`)."""
    result: str | None = emitter.track(
        user_id=f"user-{tag}", event="Fault Event", properties={"tag": tag, "n": n, "pad": pad}
    )
    return result


# -- a producer process the test drives step by step ---------------------------------------------------------


def _child_loop(conn: Connection, spool_dir: str, options: dict[str, Any]) -> None:
    from rudder_fast import Emitter

    em = Emitter(spool_dir, **options)
    while True:
        cmd, arg = conn.recv()
        try:
            if cmd == "emit":
                reply: Any = _emit(em, **arg)
            elif cmd == "stats":
                reply = em.stats()
            elif cmd == "close":
                em.close()
                reply = None
            elif cmd == "exit":
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", reply))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


def _emit(
    em: Any, *, tag: str, count: int, pad: int = 0, until_none: bool = False, after_none: int = 0
) -> dict[str, Any]:
    """``count`` calls (or until one returns None, then ``after_none`` more); ids and timings."""
    results: list[str | None] = []
    slowest = 0.0
    padding = "p" * pad
    left_after_none = -1
    for n in range(count):
        t0 = time.monotonic()
        mid = track(em, tag, n, padding)
        slowest = max(slowest, time.monotonic() - t0)
        results.append(mid)
        if until_none:
            if mid is None and left_after_none < 0:
                left_after_none = after_none
            if left_after_none == 0:
                break
            if left_after_none > 0:
                left_after_none -= 1
    return {"results": results, "slowest_s": slowest}


class ProducerChild:
    """A forked process holding one ``Emitter``, doing what the test asks, when it asks.

    Exceptions inside the child are sent back and re-raised here as AssertionError: "no exception
    reaches the app" is checked by every call going through this.
    """

    def __init__(self, spool_dir: Path, **options: Any) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child_loop, args=(child_conn, str(spool_dir), options), daemon=True)
        self.proc.start()
        child_conn.close()

    def call(self, cmd: str, arg: Any = None, timeout: float = CHILD_REPLY_TIMEOUT_S) -> Any:
        self._conn.send((cmd, arg))
        if not self._conn.poll(timeout):
            self.kill()
            raise AssertionError(f"producer {self.proc.pid} did not answer {cmd!r} within {timeout} s")
        status, reply = self._conn.recv()
        if status != "ok":
            raise AssertionError(f"exception in the producer process:\n{reply}")
        return reply

    def emit(self, tag: str, count: int, **kw: Any) -> list[str | None]:
        results: list[str | None] = self.call("emit", {"tag": tag, "count": count, **kw})["results"]
        return results

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("stats")
        return stats

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ask it to exit (it does not close its emitter: the segment is finished by its death)."""
        if self.proc.is_alive():
            with contextlib.suppress(OSError, EOFError, AssertionError):
                self.call("exit", timeout=timeout)
            self.proc.join(timeout)
        self.kill()
        return self.proc.exitcode

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self._conn.close()


# -- many short-lived producers ------------------------------------------------------------------------------


def fork_wave(
    spool_dir: Path,
    processes: int,
    per_process: int,
    *,
    tag: str,
    first: int = 0,
    pad: int = 0,
    timeout: float = 60.0,
    close: Callable[[int], bool] = lambda i: i % 2 == 0,
) -> list[str]:
    """``os.fork`` ``processes`` children, each an Emitter making ``per_process`` calls and exiting
    (even ones seal their segment with ``close()``, odd ones just exit). Their messageIds come back
    through one pipe, one line per child (a write under PIPE_BUF is atomic)."""
    r, w = os.pipe()
    pids = []
    try:
        for i in range(first, first + processes):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 70
                try:
                    os.close(r)
                    from rudder_fast import Emitter

                    em = Emitter(spool_dir)
                    got = [track(em, f"{tag}-{i}", n, "q" * pad) for n in range(per_process)]
                    if close(i):
                        em.close()
                    line = orjson.dumps([i, got]) + b"\n"
                    assert len(line) <= 4096
                    os.write(w, line)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            pids.append(pid)
        os.close(w)
        w = -1
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"producers still running after {timeout} s"
            if select.select([r], [], [], left)[0]:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                data += chunk
        failures = []
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                failures.append(pid)
        pids = []
        assert not failures, f"producers {failures} failed"
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    ids: list[str] = []
    rows = [orjson.loads(line) for line in data.splitlines() if line.strip()]
    assert len(rows) == processes, f"{len(rows)} of {processes} producers reported"
    for _, reported in sorted(rows):
        assert None not in reported, "a short-lived producer's event was dropped"
        ids.extend(reported)
    return ids
