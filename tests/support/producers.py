"""Producer processes, each with its own ``Emitter``, for the tests that need the app side for real.

- :func:`fill_spool`: ``multiprocessing`` fork children make N calls each and report what they returned;
- :class:`ProducerChild`: one forked process doing what the test asks, when it asks;
- :func:`fork_wave`: many short-lived ``os.fork`` children, each a few calls and gone;
- :func:`producer_env`: the environment of a producer program started as a subprocess;
- :func:`point_default_emitter`: ``rudder_fast.emit`` writing to a test's emitter for one test.

Every child is reaped here: killed at its deadline if it has not finished, and the test failed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import pytest

from rudder_fast import Emitter
from tests.support.processes import REPO_ROOT

PRODUCER_TIMEOUT_S = 120.0
CHILD_REPLY_TIMEOUT_S = 60.0
# The app modules some tests run under a server (gunicorn, uWSGI): PYTHONPATH for their processes.
APPS_DIR = REPO_ROOT / "tests" / "e2e" / "apps"


def producer_env(spool_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of an app/producer process: the spool from RUDDER_FAST_SPOOL_DIR, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUDDER_")}
    env["RUDDER_FAST_SPOOL_DIR"] = str(spool_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(APPS_DIR)])
    env.update(extra)
    return env


def read_id_report(path: Path) -> list[str]:
    """The ids a producer reported, one per complete line (a torn last line is ignored)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n")
    return [line.decode() for line in data[: end + 1].splitlines() if line]


def track(emitter: Emitter, tag: str, n: int, pad: str = "") -> str | None:
    """The one call shape the fault suites use (checked on arrival by
    :func:`tests.support.delivery.assert_wire_event`)."""
    return emitter.track(
        user_id=f"user-{tag}", event="Fault Event", properties={"tag": tag, "n": n, "pad": pad}
    )


def point_default_emitter(monkeypatch: pytest.MonkeyPatch, emitter: Emitter) -> None:
    """Make ``rudder_fast.emit`` write through ``emitter`` for one test (undone by ``monkeypatch``)."""
    import rudder_fast

    for name in ("_writer", "_append", "spool_dir", "on_full", "block_timeout"):
        monkeypatch.setattr(rudder_fast.emit, name, getattr(emitter, name), raising=False)


# -- many producers at once, each N calls ------------------------------------------------------------------

Identity = Callable[[int, int], tuple[str | None, str | None]]


def default_identity(producer: int, j: int) -> tuple[str | None, str | None]:
    """(user_id, anonymous_id): mostly users, every 7th event anonymous only."""
    if j % 7 == 3:
        return None, f"anon-{producer}-{j}"
    return f"user-{producer}-{j}", None


@dataclass
class Produced:
    """What the producers reported: every messageId their calls returned, with the call's time window."""

    ids: list[str] = field(default_factory=list)
    user_of: dict[str, str | None] = field(default_factory=dict)
    window_ms: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (before, after) in ms

    @property
    def id_set(self) -> set[str]:
        return set(self.ids)


@dataclass(frozen=True)
class _FillJob:
    spool_dir: str
    index: int
    count: int
    identity: Identity
    report: str
    close: bool
    payload: int


def _produce(job: _FillJob) -> None:
    """Child body: ``count`` track calls, then the messageIds and the time window to ``report``."""
    em = Emitter(job.spool_dir)
    rows = []
    padding = "x" * job.payload
    t0 = time.time_ns()
    for j in range(job.count):
        user_id, anonymous_id = job.identity(job.index, j)
        mid = em.track(
            user_id=user_id,
            anonymous_id=anonymous_id,
            event="E2E Event",
            properties={"producer": job.index, "n": j, "pad": padding},
        )
        rows.append([mid, user_id])
    t1 = time.time_ns()
    if job.close:
        em.close()  # half the producers seal their segment, the others just exit
    tmp = job.report + ".tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"t0": t0, "t1": t1, "rows": rows}))
    os.replace(tmp, job.report)


def _fill_child(job: _FillJob) -> None:
    try:
        _produce(job)
    except BaseException:  # noqa: BLE001 - a child's failure is its exit code, with its traceback
        traceback.print_exc()
        os._exit(70)


def fill_spool(
    spool_dir: Path,
    processes: int,
    per_process: int,
    *,
    identity: Identity = default_identity,
    payload: int = 0,
    timeout: float = PRODUCER_TIMEOUT_S,
) -> Produced:
    """Fork ``processes`` producers, each making ``per_process`` track calls on ``spool_dir``; wait."""
    ctx = multiprocessing.get_context("fork")
    report_dir = spool_dir.parent / f"produced-{time.time_ns()}"
    report_dir.mkdir(parents=True)
    procs = []
    try:
        for i in range(processes):
            report = str(report_dir / f"{i}.json")
            job = _FillJob(str(spool_dir), i, per_process, identity, report, i % 2 == 0, payload)
            p = ctx.Process(target=_fill_child, args=(job,), daemon=True)
            p.start()
            procs.append((p, report))
        deadline = time.monotonic() + timeout
        for p, _ in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            assert p.exitcode == 0, f"producer {p.pid} exit code {p.exitcode}"
    finally:
        for p, _ in procs:
            if p.is_alive():
                p.kill()
                p.join()
            p.close()
    produced = Produced()
    for _, report in procs:
        doc = orjson.loads(Path(report).read_bytes())
        window = (doc["t0"] // 1_000_000, doc["t1"] // 1_000_000)
        for mid, user_id in doc["rows"]:
            assert mid is not None, "a producer's event was dropped"
            produced.ids.append(mid)
            produced.user_of[mid] = user_id
            produced.window_ms[mid] = window
    assert len(produced.id_set) == len(produced.ids) == processes * per_process
    return produced


# -- a producer process the test drives step by step ------------------------------------------------------


def _child_loop(conn: Connection, spool_dir: str, options: dict[str, Any]) -> None:
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
        except BaseException:  # noqa: BLE001 - sent to the test, which fails with it
            conn.send(("error", traceback.format_exc()))


def _emit(
    em: Emitter, *, tag: str, count: int, pad: int = 0, until_none: bool = False, after_none: int = 0
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


# -- many short-lived producers ---------------------------------------------------------------------------


def _wave_child(
    pipe: tuple[int, int], spool_dir: Path, i: int, *, per_process: int, tag: str, pad: int, close: bool
) -> None:
    """One short-lived producer: its calls, then one line ``[i, ids]`` to the pipe; never returns."""
    r, w = pipe
    code = 70
    try:
        os.close(r)
        em = Emitter(spool_dir)
        got = [track(em, f"{tag}-{i}", n, "q" * pad) for n in range(per_process)]
        if close:
            em.close()
        line = orjson.dumps([i, got]) + b"\n"
        assert len(line) <= 4096
        os.write(w, line)
        code = 0
    except BaseException:  # noqa: BLE001 - a child's failure is its exit code, with its traceback
        traceback.print_exc()
    finally:
        os._exit(code)


def _read_until_eof(r: int, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"producers still running after {timeout} s"
        if select.select([r], [], [], left)[0]:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                return data
            data += chunk


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
                _wave_child((r, w), spool_dir, i, per_process=per_process, tag=tag, pad=pad, close=close(i))
            pids.append(pid)
        os.close(w)
        w = -1
        data = _read_until_eof(r, timeout)
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
