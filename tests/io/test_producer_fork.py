"""Producers under every kind of fork: each messageId a call returned is in the spool exactly once.

Real processes throughout: ``os.fork`` (with the parent's segment already open), multiprocessing with
the fork, spawn and forkserver start methods, ``ProcessPoolExecutor``, threads, and a fork straight from
C that skips Python's at-fork hooks. Children send the ids they were given back through pipes or files;
the spool is read by the real ``rudder-fast inspect``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import json
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from rudder_fast import Emitter
from rudder_fast.emitter import _DefaultEmitter
from rudder_fast.tail import SegmentTail, writer_alive
from tests.support.processes import read_to_eof, reap
from tests.support.spool import inspect_spool, nonce_of, segment_files

CHILD_DEADLINE_S = 60.0

# -- plain os.fork children ------------------------------------------------------------------------


def start_child(body: Callable[[], Iterable[str | None]]) -> tuple[int, int]:
    """Fork; the child writes the ids ``body`` returns to a pipe, one a line, and ``_exit``s.

    The child never returns into pytest: any exception is printed and turns into exit code 70.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 70
        try:
            os.close(r)
            data = memoryview("".join(f"{i}\n" for i in body()).encode())
            while data:
                data = data[os.write(w, data) :]
            code = 0
        except BaseException:  # noqa: BLE001 - a child reports any failure by its exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def finish_child(pid: int, r: int, timeout: float = CHILD_DEADLINE_S) -> tuple[list[str], int]:
    """Read a child's ids to EOF and reap it: (ids, exit code). Kills it and fails at the deadline."""
    deadline = time.monotonic() + timeout
    try:
        raw = read_to_eof(r, pid, deadline)
    finally:
        os.close(r)
    return raw.decode().split(), reap(pid, deadline)


# -- checks ----------------------------------------------------------------------------------------


def assert_exactly_once(spool_dir: Path, ids: Sequence[str | None]) -> list[dict[str, Any]]:
    """Every returned id is a str, unique, and the spool holds exactly these events, each once."""
    assert all(isinstance(i, str) for i in ids), "a call returned None (dropped) or a non-str"
    returned = collections.Counter(ids)
    assert [i for i, n in returned.items() if n > 1] == [], "two calls returned the same messageId"
    events, summary = inspect_spool(spool_dir)
    found = collections.Counter(e["messageId"] for e in events)
    assert {i: n for i, n in found.items() if n > 1} == {}, "an event is in the spool twice"
    assert set(returned) - set(found) == set(), "returned ids missing from the spool"
    assert set(found) - set(returned) == set(), "events in the spool that no call returned"
    assert " 0 bytes skipped" in summary, summary
    return events


# -- module-level workers (spawn and forkserver children import this module) ------------------------

# The parent's emitter, inherited by fork children (spawn/forkserver children see None and make their own).
_INHERITED: Emitter | None = None


def _emitter_for(spool: str) -> Emitter:
    inherited = _INHERITED
    if inherited is not None and inherited.spool_dir == Path(spool):
        return inherited
    return Emitter(spool)


def _mp_worker(spool: str, tag: str, n: int, out: str) -> None:
    em = _emitter_for(spool)
    ids = [em.track(user_id=tag, event="mp", properties={"i": i}) for i in range(n)]
    Path(out + ".tmp").write_text("\n".join(map(str, ids)))
    os.rename(out + ".tmp", out)


def _mp_barrier_worker(spool: str, tag: str, n: int, out: str, barrier: Any) -> None:
    em = _emitter_for(spool)
    barrier.wait(CHILD_DEADLINE_S)
    track = em.track
    ids = [track(user_id=tag, event="burst", properties={"i": i}) for i in range(n)]
    Path(out).write_text("\n".join(map(str, ids)))


def _pool_task(spool: str, task: int, n: int) -> tuple[int, list[str | None]]:
    em = _emitter_for(spool)
    ids = [em.identify(user_id=f"t{task}", traits={"i": i}) for i in range(n)]
    return os.getpid(), ids


@pytest.fixture
def inherited(spool_dir: Path) -> Iterator[Emitter]:
    """An emitter in this process that fork children inherit (with its segment already open)."""
    global _INHERITED
    em = Emitter(spool_dir)
    _INHERITED = em
    try:
        yield em
    finally:
        _INHERITED = None
        em.close()


def join_all(procs: list[Any], timeout: float = CHILD_DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [p.pid for p in procs if p.is_alive()]
        assert hung == [], f"children still running at the deadline: {hung}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def stop_multiprocessing_helpers() -> None:
    """Stop the forkserver and resource-tracker processes multiprocessing started for a test."""
    multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]
    multiprocessing.resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]


# -- os.fork ---------------------------------------------------------------------------------------


def test_os_fork_after_the_parent_emitted(spool_dir: Path) -> None:
    em = Emitter(spool_dir)
    parent_ids = [em.track(user_id="p", event="before fork", properties={"i": i}) for i in range(50)]
    parent_segment = em.stats()["segment"]

    pid, r = start_child(
        lambda: [em.track(user_id="c", event="in child", properties={"i": i}) for i in range(50)]
    )
    # the parent keeps emitting while the child runs
    parent_ids += [em.track(user_id="p", event="after fork", properties={"i": i}) for i in range(50)]
    child_ids, code = finish_child(pid, r)
    em.close()

    assert code == 0
    assert len(child_ids) == 50
    parent_nonces = {nonce_of(str(i)) for i in parent_ids}
    child_nonces = {nonce_of(i) for i in child_ids}
    assert len(parent_nonces) == 1
    assert len(child_nonces) == 1
    assert child_nonces != parent_nonces
    names = sorted(p.name for p in segment_files(spool_dir))
    assert names == sorted([Path(parent_segment).name, f"{child_nonces.pop()}-{pid}-0.seg"])
    events = assert_exactly_once(spool_dir, [*parent_ids, *child_ids])
    by_id = {e["messageId"]: e for e in events}
    assert {by_id[i]["userId"] for i in child_ids} == {"c"}
    assert [by_id[i]["properties"]["i"] for i in child_ids] == list(range(50))


def test_forked_child_gets_its_own_segment_and_the_parent_keeps_its_lock(spool_dir: Path) -> None:
    em = Emitter(spool_dir)
    parent_ids = [em.track(user_id="p", event="e") for _ in range(5)]
    parent_path = Path(em.stats()["segment"])
    ids_r, ids_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: emit, report, then stay alive until the parent says go
        code = 70
        try:
            os.close(ids_r)
            os.close(go_w)
            mids = [em.track(user_id="c", event="e") for _ in range(5)]
            report = {"ids": mids, "segment": em.stats()["segment"], "stats": em.stats()}
            os.write(ids_w, json.dumps(report).encode())
            os.close(ids_w)
            os.read(go_r, 1)
            code = 0
        except BaseException:  # noqa: BLE001 - a child reports any failure by its exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(ids_w)
    os.close(go_r)
    tails: list[SegmentTail] = []
    reaped = False
    try:
        report = json.loads(read_to_eof(ids_r, pid, time.monotonic() + CHILD_DEADLINE_S))
        child_path = Path(report["segment"])
        assert child_path != parent_path
        assert child_path.name == f"{nonce_of(report['ids'][0])}-{pid}-0.seg"
        assert report["stats"]["accepted"] == 5  # the child's counts start at its fork

        parent_tail = SegmentTail.open(parent_path)
        child_tail = SegmentTail.open(child_path)
        assert parent_tail is not None
        assert child_tail is not None
        tails += [parent_tail, child_tail]
        assert child_tail.header is not None
        assert parent_tail.header is not None
        assert child_tail.header.pid == pid
        assert child_tail.header.nonce == nonce_of(report["ids"][0])
        assert parent_tail.header.pid == os.getpid()
        assert writer_alive(child_tail.fd), "the child does not hold its segment's lock"
        assert writer_alive(parent_tail.fd), "the child released the parent's lock"

        os.write(go_w, b"x")
        reaped = True  # reap() kills and waits for it if it has not exited by the deadline
        assert reap(pid, time.monotonic() + CHILD_DEADLINE_S) == 0
        assert not writer_alive(child_tail.fd), "a dead child's segment still looks live"
        assert writer_alive(parent_tail.fd), "the child's exit released the parent's lock"

        # the parent still appends to the same segment, unaffected
        parent_ids.append(em.track(user_id="p", event="after child"))
        assert Path(em.stats()["segment"]) == parent_path
        em.close()
        assert not writer_alive(parent_tail.fd), "close() did not release the lock"
        assert_exactly_once(spool_dir, parent_ids + report["ids"])
    finally:
        for t in tails:
            t.close()
        os.close(ids_r)
        os.close(go_w)
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_fork_while_another_thread_holds_the_writer_lock(spool_dir: Path) -> None:
    em = Emitter(spool_dir)
    parent_ids = [em.track(user_id="p", event="e", properties={"i": i}) for i in range(10)]
    held = threading.Event()
    release = threading.Event()

    def hold_the_lock() -> None:  # a thread caught in the middle of an append at the fork
        assert em._writer is not None
        with em._writer._lock:
            held.set()
            release.wait(CHILD_DEADLINE_S)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert held.wait(10)
        pid, r = start_child(lambda: [em.track(user_id="c", event="e") for _ in range(10)])
        child_ids, code = finish_child(pid, r, timeout=15)
    finally:
        release.set()
        holder.join(10)
    assert code == 0
    parent_ids.append(em.track(user_id="p", event="after"))
    em.close()
    assert_exactly_once(spool_dir, [*parent_ids, *child_ids])


def _twenty_calls(em: Emitter, user_id: str) -> list[str | None]:
    return [em.track(user_id=user_id, event="e") for _ in range(20)]


def test_fork_while_another_thread_is_emitting(spool_dir: Path) -> None:
    """Forks at arbitrary points of another thread's appends: nothing lost, no child hangs."""
    em = Emitter(spool_dir)
    stop = threading.Event()
    thread_ids: list[str | None] = []

    def busy() -> None:
        while not stop.is_set():
            thread_ids.append(em.track(user_id="t", event="busy"))

    worker = threading.Thread(target=busy)
    worker.start()
    child_ids: list[str] = []
    try:
        for k in range(20):
            pid, r = start_child(functools.partial(_twenty_calls, em, f"c{k}"))
            ids, code = finish_child(pid, r, timeout=15)
            assert code == 0
            assert len(ids) == 20
            child_ids += ids
    finally:
        stop.set()
        worker.join(10)
    em.close()
    assert len({nonce_of(i) for i in child_ids}) == 20
    assert_exactly_once(spool_dir, [*thread_ids, *child_ids])


def test_fork_while_another_thread_creates_the_default_emitter(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lazy default ``emit`` under fork: a thread creating it at the fork must not hang the child."""
    monkeypatch.setenv("RUDDER_FAST_SPOOL_DIR", str(spool_dir))
    default = _DefaultEmitter()  # what ``rudder_fast.emit`` is, before its first use
    held = threading.Event()
    release = threading.Event()

    def first_use() -> None:  # a thread inside emit.get(), creating the Emitter, at the fork
        with default._lock:
            held.set()
            release.wait(CHILD_DEADLINE_S)

    creator = threading.Thread(target=first_use)
    creator.start()
    try:
        assert held.wait(10)
        pid, r = start_child(lambda: [default.track(user_id="c", event="e") for _ in range(3)])
        child_ids, code = finish_child(pid, r, timeout=5)
    finally:
        release.set()
        creator.join(10)
    assert code == 0
    assert_exactly_once(spool_dir, child_ids)


HOOKLESS_FORK = textwrap.dedent(
    """
    import ctypes, json, os, sys
    from pathlib import Path
    from rudder_fast import Emitter
    from rudder_fast.tail import SegmentTail, writer_alive

    em = Emitter(sys.argv[1])
    parent_ids = [em.track(user_id="p", event="before", properties={"i": i}) for i in range(20)]
    parent_segment = em.stats()["segment"]
    r, w = os.pipe()
    pid = ctypes.PyDLL(None).fork()  # fork(2) from C: Python's at-fork hooks do not run
    if pid == 0:
        try:
            ids = [em.track(user_id="c", event="child", properties={"i": i}) for i in range(20)]
            os.write(w, json.dumps({"ids": ids, "pid": os.getpid(),
                                    "segment": em.stats()["segment"]}).encode())
        finally:
            os._exit(0)
    os.close(w)
    raw = b""
    while chunk := os.read(r, 65536):
        raw += chunk
    _, status = os.waitpid(pid, 0)
    parent_ids += [em.track(user_id="p", event="after", properties={"i": i}) for i in range(20)]
    tail = SegmentTail.open(Path(parent_segment))
    print(json.dumps({"child": json.loads(raw), "status": status, "parent_ids": parent_ids,
                      "parent_segment": parent_segment, "parent_nonce": em._writer.nonce,
                      "parent_still_locked": writer_alive(tail.fd),
                      "segment_after": em.stats()["segment"]}))
    """
)


def test_fork_that_skips_the_at_fork_hooks(spool_dir: Path) -> None:
    """A fork from C (uWSGI without its hook, a C extension): the pid check makes a new segment."""
    proc = subprocess.run(
        [sys.executable, "-c", HOOKLESS_FORK, str(spool_dir)],
        capture_output=True,
        timeout=CHILD_DEADLINE_S,
        check=True,
    )
    out = json.loads(proc.stdout)
    child = out["child"]
    assert out["status"] == 0
    assert {nonce_of(i) for i in out["parent_ids"]} == {out["parent_nonce"]}
    child_nonces = {nonce_of(i) for i in child["ids"]}
    assert len(child_nonces) == 1
    assert child_nonces != {out["parent_nonce"]}
    child_path = Path(child["segment"])
    assert child_path.name == f"{child_nonces.pop()}-{child['pid']}-0.seg"
    tail = SegmentTail.open(child_path)
    assert tail is not None
    assert tail.header is not None
    try:
        assert tail.header.pid == child["pid"]
    finally:
        tail.close()
    assert out["parent_still_locked"], "the hookless child released the parent's lock"
    assert out["segment_after"] == out["parent_segment"]
    assert_exactly_once(spool_dir, out["parent_ids"] + child["ids"])


# -- multiprocessing -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_start_methods(
    method: str, spool_dir: Path, tmp_path: Path, inherited: Emitter
) -> None:
    # Each of the three contexts has Process; get_context's type for a plain str does not say so.
    ctx = cast("multiprocessing.context.DefaultContext", multiprocessing.get_context(method))
    parent_ids = [inherited.track(user_id="parent", event="e", properties={"i": i}) for i in range(20)]
    outs = [tmp_path / f"ids-{k}" for k in range(3)]
    procs = [
        ctx.Process(target=_mp_worker, args=(str(spool_dir), f"w{k}", 300, str(out)))
        for k, out in enumerate(outs)
    ]
    try:
        for p in procs:
            p.start()
        parent_ids += [inherited.track(user_id="parent", event="meanwhile") for _ in range(20)]
        join_all(procs)
    finally:
        if method != "fork":
            stop_multiprocessing_helpers()
    child_ids: list[str | None] = []
    for out in outs:
        ids = out.read_text().split("\n")
        assert len(ids) == 300
        assert len({nonce_of(i) for i in ids}) == 1
        child_ids += ids
    nonces = {nonce_of(i) for i in parent_ids + child_ids if i}
    assert len(nonces) == 4, "parent and each child need their own nonce"
    pids = {int(p.name.split("-")[1]) for p in segment_files(spool_dir)}
    assert pids == {os.getpid(), *(p.pid for p in procs)}
    assert_exactly_once(spool_dir, [*parent_ids, *child_ids])


def test_process_pool_executor(spool_dir: Path, inherited: Emitter) -> None:
    parent_ids = [inherited.track(user_id="parent", event="e") for _ in range(10)]
    with concurrent.futures.ProcessPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_pool_task, str(spool_dir), t, 250) for t in range(12)]
        results = [f.result(timeout=CHILD_DEADLINE_S) for f in futures]
    child_ids = [i for _, ids in results for i in ids]
    assert len(child_ids) == 12 * 250
    worker_pids = {pid for pid, _ in results}
    nonces = {nonce_of(i) for i in child_ids if i}
    assert len(nonces) == len(worker_pids), "each worker process needs one nonce of its own"
    assert parent_ids[0] is not None
    assert nonce_of(parent_ids[0]) not in nonces
    assert_exactly_once(spool_dir, [*parent_ids, *child_ids])


def test_eight_threads_in_one_process(spool_dir: Path) -> None:
    em = Emitter(spool_dir)
    per_thread = 2000
    barrier = threading.Barrier(8)
    results: list[list[str | None]] = [[] for _ in range(8)]

    def run(k: int) -> None:
        barrier.wait(30)
        out = results[k]
        for i in range(per_thread):
            out.append(em.track(user_id=f"thread{k}", event="e", properties={"i": i}))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CHILD_DEADLINE_S)
    assert not any(t.is_alive() for t in threads)
    ids = [i for r in results for i in r]
    assert len(ids) == 8 * per_thread
    assert em.stats()["accepted"] == 8 * per_thread
    em.close()
    # one process, one nonce: the seq numbers are exactly 0..n-1, none skipped or reused
    assert sorted(int(str(i).rsplit("-", 1)[1]) for i in ids) == list(range(8 * per_thread))
    assert_exactly_once(spool_dir, ids)


def test_eight_processes_ten_thousand_events_each_at_once(
    spool_dir: Path, tmp_path: Path, inherited: Emitter
) -> None:
    ctx = multiprocessing.get_context("fork")
    parent_ids = [inherited.track(user_id="parent", event="e")]  # children inherit an open segment
    barrier = ctx.Barrier(8)
    outs = [tmp_path / f"burst-{k}" for k in range(8)]
    procs = [
        ctx.Process(target=_mp_barrier_worker, args=(str(spool_dir), f"b{k}", 10_000, str(o), barrier))
        for k, o in enumerate(outs)
    ]
    for p in procs:
        p.start()
    join_all(procs)
    child_ids: list[str | None] = []
    for out in outs:
        ids = out.read_text().split("\n")
        assert len(ids) == 10_000
        child_ids += ids
    assert len({nonce_of(i) for i in parent_ids + child_ids if i}) == 9
    assert len(segment_files(spool_dir)) == 9
    assert_exactly_once(spool_dir, [*parent_ids, *child_ids])
