"""How fast does ``rudder-fast-sender`` deliver, and at what CPU cost? Compared, in one run, with the
gzip floor and with the peer.

Against the stand-in data plane (``rudder-fast devserver``, a fresh subprocess per measurement, started
without ``--out`` so that it only decompresses, parses, validates and counts):

1. **sender CPU per event, draining**: a backlog of realistic ``track`` events is written by several
   forked processes into a staging directory; the real ``rudder-fast-sender`` (the console script, a
   subprocess, no ``--drain``) is started on an empty spool and, once it runs (start-up excluded), the
   backlog's segment files are renamed into its ``segments/``. Its CPU (user + system, every thread,
   from the kernel's per-thread run times in nanoseconds) and the wall time are taken from that moment
   until the data plane holds every event: CPU per event, and the drain rate. Repeated on a fresh copy
   of the backlog in each round.
2. **the reference**: the same events' JSON, batched by the product's own intake (in this process, no
   HTTP), gzipped by zlib at level 1, the floor the issue measures against: the sender's CPU per event
   should stay within 2.5x of it. The product's own gzip (ISA-L's where installed) is timed beside it.
3. **end to end**: 1 and 4 forked producers each emit N events as fast as they can while a running
   sender (no ``--drain``) delivers them; timed from the producers' start to the moment the data plane
   has them all (polled every 10 ms). The sender's CPU over that window, per delivered event, is its
   **steady-state** cost. The same with rudder-sdk-python 2.1.9: each producer has its own ``Client``
   (gzip on, ``upload_size=100``, its default, ``max_queue_size=100000`` so that nothing is dropped)
   and calls ``track`` N times, then ``flush`` and ``shutdown``. In the full run the rudder_fast runs
   (cheap) are done twice, before and after the SDK's run, and the best one is compared.
4. **sender memory**: max RSS of ``rudder-fast-sender --drain`` on an empty spool, a small and a large
   backlog.

The summary prints these side by side. The machine may be shared: CPU times are printed next to wall
times, and the load average at the start and the end. This is a report, not a test: it always exits 0
when it ran. ``--quick`` is the short version run by ``scripts/test``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import timeit
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import orjson
import psutil

from rudder_fast import Emitter, __version__, compression, config, framing
from rudder_fast.batching import Batch, build_body
from rudder_fast.book import Book
from rudder_fast.delivery import Quarantine
from rudder_fast.intake import Intake
from rudder_fast.layout import SpoolPaths, ensure_spool
from rudder_fast.tail import list_segments
from rudder_fast.transport import GZIP_LEVEL, gzip_bytes
from rudder_fast.wire import WireMapper, plain_track_decoder, speedups_built

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the helpers shared with the tests
from _common import EVENT, FAST, PROPERTIES, SDK, WRITE_KEY  # a sibling module: bench/ is not a package

from tests.support.devserver import DevServer
from tests.support.processes import HOST, console_script

USER_COUNT: Final = 1_000  # each producer cycles through this many user ids

RECORD_READER: Final = "msgpack" if plain_track_decoder() is None else "msgspec"
LOOPS: Final = "C" if speedups_built() else "Python"  # the sender's per-event loops (rudder_fast/_speedups.c)
TARGET_CPU_VS_ZLIB: Final = 2.5  # sender CPU per event <= 2.5x zlib level 1 over the same JSON
TARGET_VS_SDK: Final = 8.0  # rudder_fast delivered events/s >= 8x rudder-sdk-python's, 4 producers
TARGET_RSS_GROWTH: Final = 1.25  # "flat": max RSS with the large backlog within 1.25x the small one's
PRODUCER_COUNTS: Final = (1, 4)
STATS_POLL_S: Final = 0.01
WAIT_POLL_S: Final = 0.002
RSS_SAMPLE_S: Final = 0.02


@dataclass(frozen=True)
class Plan:
    name: str
    drain_events: int  # the backlog of parts 1 and 2
    rounds: int  # drain rounds, each on a fresh copy of the backlog
    gzip_passes: int  # the reference: best of this many passes per batch
    e2e_events: int  # per producer
    e2e_fast_repeats: int  # rudder_fast runs per producer count (around the SDK's one)
    mem_small: int
    mem_large: int


QUICK: Final = Plan(
    "quick",
    drain_events=300_000,
    rounds=1,
    gzip_passes=2,
    e2e_events=25_000,
    e2e_fast_repeats=1,
    mem_small=10_000,
    mem_large=200_000,
)
FULL: Final = Plan(
    "full",
    drain_events=300_000,
    rounds=3,
    gzip_passes=5,
    e2e_events=50_000,
    e2e_fast_repeats=2,
    mem_small=10_000,
    mem_large=1_000_000,
)


# -- subprocesses: the devserver and the sender ----------------------------------------------------


class DataPlaneMeter:
    """A devserver's event count and CPU time, cheap enough to poll every 10 ms: ``GET /_stats`` over
    one keep-alive connection (reopened once if the server closed it), CPU from psutil."""

    def __init__(self, dev: DevServer) -> None:
        self.dev = dev
        self._conn: http.client.HTTPConnection | None = None
        self._ps = psutil.Process(dev.proc.pid)

    def stats(self) -> dict[str, Any]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(HOST, self.dev.port, timeout=10)
            try:
                self._conn.request("GET", "/_stats")
                resp = self._conn.getresponse()
                data: dict[str, Any] = orjson.loads(resp.read())
                return data
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def events(self) -> int:
        return int(self.stats()["events"])

    def cpu_s(self) -> float:
        t = self._ps.cpu_times()
        return float(t.user + t.system)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@contextlib.contextmanager
def data_plane(log: IO[bytes]) -> Iterator[DataPlaneMeter]:
    """A fresh ``rudder-fast devserver`` (no ``--out``: it only decompresses, parses, validates and
    counts), stopped on exit."""
    with DevServer.start(out=None, stderr=log) as dev:
        meter = DataPlaneMeter(dev)
        try:
            yield meter
        finally:
            meter.close()


@dataclass
class SenderRun:
    code: int
    wall_s: float  # from just before Popen to its exit
    cpu_s: float  # user + system, all its threads (from wait4)
    max_rss_kb: int  # its peak RSS (VmHWM), KiB
    note: str = ""


def peak_rss_kb(pid: int) -> int:
    """The process's peak RSS so far (``VmHWM``), or its current RSS where /proc has no VmHWM; 0 if gone.

    Not ``ru_maxrss`` from ``wait4``/``RUSAGE_CHILDREN``: Linux carries the spawning process's peak RSS
    over ``vfork``/``fork`` + ``exec`` into the child's ``ru_maxrss``, so a child started by a process that
    once held 200 MiB reports at least 200 MiB whatever it used itself.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    try:
        return int(psutil.Process(pid).memory_info().rss // 1024)
    except psutil.Error:
        return 0


class MeasuredSender:
    """``rudder-fast-sender`` as a subprocess: its peak RSS sampled while it runs, its CPU time from
    ``os.wait4`` (that child's own rusage)."""

    def __init__(self, spool: Path, url: str, *, drain: bool, log: IO[bytes]) -> None:
        cmd = [
            console_script("rudder-fast-sender"),
            "--spool-dir", str(spool),
            "--write-key", WRITE_KEY,
            "--data-plane-url", url,
        ]  # fmt: skip
        if drain:
            cmd.append("--drain")
        self.spool = spool
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        self.result: SenderRun | None = None
        self.peak_kb = 0
        self._next_sample = 0.0

    def sample(self) -> None:
        """Record the peak RSS so far (at most every RSS_SAMPLE_S; VmHWM keeps the peak in between)."""
        now = time.monotonic()
        if now >= self._next_sample and self.result is None:
            self._next_sample = now + RSS_SAMPLE_S
            self.peak_kb = max(self.peak_kb, peak_rss_kb(self.proc.pid))

    def wait(self, timeout_s: float) -> SenderRun:
        if self.result is not None:
            return self.result
        deadline = time.monotonic() + timeout_s
        note = ""
        while True:
            self.sample()
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                note = f"killed after {timeout_s:.0f} s"
                self.proc.kill()
                _, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(WAIT_POLL_S)
        ended = time.monotonic()
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code  # reaped here: Popen must not wait for it again
        self.result = SenderRun(
            code=code,
            wall_s=ended - self.started,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_kb=self.peak_kb,
            note=note,
        )
        return self.result

    def stop(self, timeout_s: float = 15.0) -> SenderRun:
        if self.result is None and self.proc.returncode is None:
            self._next_sample = 0.0
            self.sample()
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait_started(self, timeout_s: float = 15.0) -> None:
        """Until the sender has written its first status file (it then runs its loop)."""
        status = SpoolPaths(self.spool).status
        deadline = time.monotonic() + timeout_s
        while not status.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sender did not start (exit {self.proc.poll()})")
            time.sleep(WAIT_POLL_S)

    def __enter__(self) -> MeasuredSender:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.result is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.wait(10)


# -- forked producers ------------------------------------------------------------------------------


@dataclass
class ProducerResult:
    index: int
    accepted: int = 0  # calls that returned (rudder_fast: a messageId; the SDK: no exception)
    emit_end_ns: int = 0  # CLOCK_MONOTONIC (system-wide), when the last call returned
    done_ns: int = 0  # ...and when the producer was done (the SDK: after flush + shutdown)
    sdk_errors: int = 0  # upload errors reported to on_error
    sdk_warnings: int = 0  # what the SDK logged at WARNING and above (queue full, upload errors)
    first_warning: str | None = None
    error: str | None = None


def user_ids(index: int) -> list[str]:
    return [f"user-{index}-{k}" for k in range(USER_COUNT)]


def fast_producer(
    index: int,
    spool: str,
    count: int,
    barrier: multiprocessing.synchronize.Barrier | None,
    results: multiprocessing.queues.Queue[ProducerResult],
) -> None:
    res = ProducerResult(index)
    try:
        emitter = Emitter(spool)
        track = emitter.track
        users = user_ids(index)
        if barrier is not None:
            barrier.wait(timeout=60)
        accepted = 0
        for k in range(count):
            accepted += track(user_id=users[k % USER_COUNT], event=EVENT, properties=PROPERTIES) is not None
        res.emit_end_ns = time.monotonic_ns()
        emitter.close()
        res.accepted = accepted
        res.done_ns = time.monotonic_ns()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which prints it
        if barrier is not None:
            barrier.abort()
        res.error = f"{type(exc).__name__}: {exc}"
    results.put(res)


class _LogCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = record.getMessage()[:200]


def sdk_producer(
    index: int,
    url: str,
    count: int,
    barrier: multiprocessing.synchronize.Barrier | None,
    results: multiprocessing.queues.Queue[ProducerResult],
) -> None:
    res = ProducerResult(index)
    try:
        from rudderstack.analytics.client import Client  # imported in the child: its own session

        counter = _LogCounter()
        logging.getLogger("rudderstack").addHandler(counter)
        errors: list[Exception] = []
        client = Client(
            WRITE_KEY,
            host=url,
            gzip=True,
            upload_size=100,
            max_queue_size=100_000,
            on_error=lambda exc, batch: errors.append(exc),
        )
        track = client.track
        users = user_ids(index)
        if barrier is not None:
            barrier.wait(timeout=60)
        for k in range(count):
            track(user_id=users[k % USER_COUNT], event=EVENT, properties=PROPERTIES)
        res.emit_end_ns = time.monotonic_ns()
        client.flush()
        client.shutdown()
        res.done_ns = time.monotonic_ns()
        res.accepted = count
        res.sdk_errors = len(errors)
        res.sdk_warnings = counter.count
        res.first_warning = counter.first
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which prints it
        if barrier is not None:
            barrier.abort()
        res.error = f"{type(exc).__name__}: {exc}"
    results.put(res)


class Producers:
    """N forked producer processes and their result queue (a context manager that reaps them)."""

    def __init__(
        self,
        target: Callable[..., None],
        first_args: Sequence[Any],
        counts: Sequence[int],
        *,
        barrier: bool,
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        self.barrier = ctx.Barrier(len(counts) + 1) if barrier else None
        self.results: multiprocessing.queues.Queue[ProducerResult] = ctx.Queue()
        self.procs = [
            ctx.Process(target=target, args=(i, *first_args, n, self.barrier, self.results), daemon=True)
            for i, n in enumerate(counts)
        ]
        self.got: list[ProducerResult] = []
        sys.stdout.flush()  # a child flushes its copy of the buffer on exit: it must be empty
        sys.stderr.flush()
        for p in self.procs:
            p.start()

    def go(self) -> int:
        """Release the producers (all ready); CLOCK_MONOTONIC ns at the release."""
        assert self.barrier is not None
        self.barrier.wait(timeout=60)
        return time.monotonic_ns()

    def poll(self) -> bool:
        """Collect what has arrived; True once every producer has reported (or died)."""
        while True:
            try:
                self.got.append(self.results.get_nowait())
            except queue.Empty:
                break
        if len(self.got) >= len(self.procs):
            return True
        return all(p.exitcode is not None for p in self.procs) and self.results.empty()

    def wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.poll() and time.monotonic() < deadline:
            time.sleep(0.01)

    def errors(self) -> list[str]:
        errs = [f"producer {r.index}: {r.error}" for r in self.got if r.error]
        if len(self.got) < len(self.procs):
            errs.append(f"only {len(self.got)} of {len(self.procs)} producers reported")
        return errs

    def close(self, *, abort: bool = False) -> None:
        """Reap every producer; ``abort``: kill them at once (the benchmark is being interrupted)."""
        if abort and self.barrier is not None:
            self.barrier.abort()
        for p in self.procs:
            if not abort:
                p.join(timeout=10)
            if p.exitcode is None:
                p.kill()
                p.join(timeout=5)
        self.results.close()
        self.results.join_thread()

    def __enter__(self) -> Producers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(abort=exc_type is not None)


@dataclass
class Fill:
    accepted: int
    seconds: float
    errors: list[str]


def fill_spool(spool: Path, events: int, processes: int) -> Fill:
    """A backlog of ``events`` events, written by ``processes`` forked producers at once."""
    counts = [events // processes + (i < events % processes) for i in range(processes)]
    t0 = time.perf_counter()
    with Producers(fast_producer, (str(spool),), counts, barrier=False) as producers:
        producers.wait_all(max(60.0, events / 20_000))
    seconds = time.perf_counter() - t0
    return Fill(sum(r.accepted for r in producers.got), seconds, producers.errors())


# -- part 1: the sender's CPU per event and its rate, draining a backlog ----------------------------


def cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process so far, every thread: the kernel's per-thread run time in
    nanoseconds (``/proc/PID/task/*/schedstat``), where it is available. ``/proc/PID/stat``, which
    psutil reads, counts in clock ticks of 10 ms per thread: over a window of a few tenths of a second
    and eight threads that is an error of 10 % and more. (A thread that ends inside the window would take
    its time with it; the sender's live as long as it does.) psutil's otherwise."""
    total_ns = read = 0
    try:
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            # A thread that has just ended is gone from the listing, or its file is.
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{proc.pid}/task/{task}/schedstat") as f:
                total_ns += int(f.read().split()[0])
                read += 1
    except OSError:
        read = 0
    if not read:  # a kernel without schedstat (CONFIG_SCHED_INFO off): never report 0 for it
        t = proc.cpu_times()
        return float(t.user + t.system)
    return total_ns / 1e9


@dataclass
class LiveDrain:
    backlog: int
    delivered: int = 0
    seconds: float = 0.0  # from the files' arrival in segments/ to the data plane holding every event
    sender_cpu_s: float = 0.0  # the sender's CPU over those seconds
    devserver_cpu_s: float = 0.0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    segments_left: int = 0
    sender: SenderRun | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        """The sender's CPU per delivered event, µs."""
        return self.sender_cpu_s / self.delivered * 1e6 if self.delivered else 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.errors
            and self.sender is not None
            and self.sender.code == 0
            and self.delivered == self.backlog
            and self.segments_left == 0
            and set(self.statuses) <= {"200"}
        )


def stage_backlog(master: Path, work: Path) -> list[Path]:
    """A copy of the backlog's segment files in ``work`` (same file system as the spool: renamed in)."""
    work.mkdir(parents=True)
    copies = []
    for path in list_segments(SpoolPaths(master).segments):
        copy = work / path.name
        shutil.copyfile(path, copy)
        copies.append(copy)
    return copies


def wait_until(done: Callable[[], bool], timeout_s: float, poll_s: float = STATS_POLL_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def run_live_drain(master: Path, work: Path, backlog: int, log: IO[bytes]) -> LiveDrain:
    """A running sender, started on an empty spool, handed the backlog at once (see the docstring)."""
    out = LiveDrain(backlog)
    staged = stage_backlog(master, work / "staged")
    spool = work / "spool"
    segments = ensure_spool(spool).segments
    timeout_s = max(30.0, backlog / 20_000)
    with data_plane(log) as dev, MeasuredSender(spool, dev.dev.url, drain=False, log=log) as sender:
        sender.wait_started()
        proc = psutil.Process(sender.proc.pid)
        dev0, cpu0, t0 = dev.cpu_s(), cpu_s(proc), time.monotonic()
        for path in staged:
            os.rename(path, segments / path.name)

        def delivered() -> bool:
            sender.sample()
            return dev.events() >= backlog

        if not wait_until(delivered, timeout_s):
            out.errors.append(f"gave up waiting after {timeout_s:.0f} s")
        out.seconds = time.monotonic() - t0
        out.sender_cpu_s = cpu_s(proc) - cpu0
        out.devserver_cpu_s = dev.cpu_s() - dev0
        wait_until(lambda: not list_segments(segments), 10.0)  # settled segments are deleted
        out.sender = sender.stop()
        stats = dev.stats()
    out.delivered = int(stats["events"])
    out.requests = int(stats["requests"])
    out.statuses = dict(stats.get("by_status", {}))
    out.segments_left = len(list_segments(segments))
    shutil.rmtree(work, ignore_errors=True)
    return out


# -- part 2: the reference, zlib level 1 over the same events' JSON ---------------------------------


@dataclass
class Reference:
    events: int = 0
    batches: int = 0
    body_bytes: int = 0
    zlib_bytes: int = 0
    product_gzip_bytes: int = 0
    zlib_s: float = 0.0  # zlib level 1 over every body, best of the passes for each
    product_gzip_s: float = 0.0  # the sender's own gzip_bytes, the same way

    @property
    def zlib_us(self) -> float:
        return self.zlib_s / self.events * 1e6 if self.events else 0.0

    @property
    def product_gzip_us(self) -> float:
        return self.product_gzip_s / self.events * 1e6 if self.events else 0.0


def zlib_level_1(body: bytes) -> bytes:
    comp = zlib.compressobj(1, zlib.DEFLATED, compression.GZIP_WBITS)
    return comp.compress(body) + comp.flush()


def run_reference(master: Path, work: Path, passes: int) -> Reference:
    """The backlog's events batched by the product's own intake (as the sender batches them, in this
    process, nothing sent), each batch's body gzipped by zlib level 1 and by the sender's gzip."""
    ref = Reference()
    spool = work / "spool"
    paths = ensure_spool(spool)
    for path in stage_backlog(master, work / "staged"):
        os.rename(path, paths.segments / path.name)
    sent_at = WireMapper(__version__).clock.format_ns(time.time_ns())

    def measure(batch: Batch) -> bool:
        body = build_body(batch.stubs, sent_at)
        ref.events += len(batch.stubs)
        ref.batches += 1
        ref.body_bytes += len(body)
        ref.zlib_bytes += len(zlib_level_1(body))
        ref.product_gzip_bytes += len(gzip_bytes(body))
        ref.zlib_s += min(timeit.repeat(lambda: zlib_level_1(body), number=1, repeat=passes))
        ref.product_gzip_s += min(timeit.repeat(lambda: gzip_bytes(body), number=1, repeat=passes))
        return True

    cfg = config.SenderConfig(spool_dir=spool, write_key=WRITE_KEY, data_plane_urls=(HOST,), drain=True)
    book = Book()
    intake = Intake(
        paths.segments, book, mapper=WireMapper(__version__), quarantine=Quarantine(paths.rejected),
        submit=measure, cfg=cfg,
    )  # fmt: skip
    intake.rescan()
    while True:
        now = time.monotonic()
        progressed = intake.pump(now)
        intake.flush_due(now, caught_up=not progressed)
        if not progressed and intake.batch is None and intake.ready is None:
            break
    for seg in intake.segments.values():
        seg.tail.close()
    shutil.rmtree(work, ignore_errors=True)
    return ref


# -- part 4: sender memory (the sender with --drain, start to exit) -----------------------------


@dataclass
class DrainRun:
    backlog: int
    sender: SenderRun
    delivered: int
    requests: int
    statuses: dict[str, int]
    devserver_cpu_s: float
    segments_left: int

    @property
    def rate(self) -> float:
        return self.delivered / self.sender.wall_s if self.sender.wall_s else 0.0

    @property
    def ok(self) -> bool:
        s = self.sender
        return (
            s.code == 0
            and not s.note
            and self.delivered == self.backlog
            and self.segments_left == 0
            and set(self.statuses) <= {"200"}
        )


def run_drain(spool: Path, backlog: int, log: IO[bytes]) -> DrainRun:
    """``rudder-fast-sender --drain`` on ``spool``, against a fresh devserver."""
    with data_plane(log) as dev:
        cpu0 = dev.cpu_s()
        with MeasuredSender(spool, dev.dev.url, drain=True, log=log) as sender:
            run = sender.wait(timeout_s=max(15.0, backlog / 20_000))
        stats = dev.stats()
        cpu = dev.cpu_s() - cpu0
    left = len(list_segments(SpoolPaths(spool).segments))
    return DrainRun(
        backlog=backlog,
        sender=run,
        delivered=int(stats["events"]),
        requests=int(stats["requests"]),
        statuses=dict(stats.get("by_status", {})),
        devserver_cpu_s=cpu,
        segments_left=left,
    )


# -- part 3: end to end ----------------------------------------------------------------------------


@dataclass
class E2ERun:
    kind: str
    producers: int
    per_producer: int
    sent: int = 0
    delivered: int = 0
    emit_s: float = 0.0  # producers' start to the last call returning
    delivered_s: float = 0.0  # producers' start to the data plane holding every event
    sender: SenderRun | None = None
    sender_cpu_s: float = 0.0  # rudder_fast: the sender's CPU from the producers' start to the end
    sdk_errors: int = 0
    sdk_warnings: int = 0
    first_warning: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.delivered / self.delivered_s if self.delivered_s else 0.0

    @property
    def cpu_us(self) -> float:
        """rudder_fast: the sender's CPU per delivered event in steady state, µs."""
        return self.sender_cpu_s / self.delivered * 1e6 if self.delivered else 0.0


def wait_delivered(
    dev: DataPlaneMeter, sender: MeasuredSender | None, group: Producers, out: E2ERun, timeout_s: float
) -> tuple[int, int]:
    """Poll until the data plane has every event the producers accepted (the SDK: until its producers
    flushed and shut down); (when that was seen, in CLOCK_MONOTONIC ns; the events delivered)."""
    total = out.producers * out.per_producer
    deadline = time.monotonic() + timeout_s
    while True:
        now_ns = time.monotonic_ns()
        delivered = dev.events()
        if sender is not None:
            sender.sample()
        reported = group.poll()
        expected = sum(r.accepted for r in group.got) if reported else total
        if delivered >= expected and (out.kind == FAST or delivered >= total):
            return now_ns, delivered
        if reported and out.kind == SDK:  # flushed and shut down: nothing more will come
            return now_ns, dev.events()
        if time.monotonic() > deadline:
            out.errors.append(f"gave up waiting after {timeout_s:.0f} s")
            return now_ns, delivered
        time.sleep(STATS_POLL_S)


def run_e2e(kind: str, producers: int, per_producer: int, base: Path, log: IO[bytes]) -> E2ERun:
    out = E2ERun(kind, producers, per_producer)
    total = producers * per_producer
    timeout_s = max(30.0, total / 2_000)
    spool = Path(tempfile.mkdtemp(prefix="e2e-", dir=base)) / "spool"
    try:
        with data_plane(log) as dev, contextlib.ExitStack() as stack:
            sender: MeasuredSender | None = None
            target: Callable[..., None]
            if kind == FAST:
                sender = stack.enter_context(MeasuredSender(spool, dev.dev.url, drain=False, log=log))
                sender.wait_started()
                target, first_args = fast_producer, (str(spool),)
            else:
                target, first_args = sdk_producer, (dev.dev.url,)
            group = stack.enter_context(
                Producers(target, first_args, [per_producer] * producers, barrier=True)
            )
            proc = psutil.Process(sender.proc.pid) if sender is not None else None
            t0 = group.go()
            cpu0 = cpu_s(proc) if proc is not None else 0.0
            end_ns, delivered = wait_delivered(dev, sender, group, out, timeout_s)
            if proc is not None:
                out.sender_cpu_s = cpu_s(proc) - cpu0
            group.wait_all(timeout_s=60)
            if sender is not None:
                out.sender = sender.stop()
                if out.sender.code != 0:
                    out.errors.append(f"sender exited with {out.sender.code} {out.sender.note}")
            out.delivered = dev.events()  # anything arriving late counts (a duplicate would show here)
            if out.delivered != delivered and not out.errors:
                out.errors.append(f"{out.delivered - delivered} events arrived after the end was timed")
            out.delivered_s = (end_ns - t0) / 1e9
            got = group.got
            out.sent = sum(r.accepted for r in got)
            out.emit_s = (max((r.emit_end_ns for r in got), default=t0) - t0) / 1e9
            out.sdk_errors = sum(r.sdk_errors for r in got)
            out.sdk_warnings = sum(r.sdk_warnings for r in got)
            out.first_warning = next((r.first_warning for r in got if r.first_warning), None)
            out.errors += group.errors()
    finally:
        shutil.rmtree(spool.parent, ignore_errors=True)
    return out


# -- report ----------------------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path``, from /proc/mounts (Linux), else "unknown"."""
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
                    if inside and len(mount) > len(best):
                        best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def print_drain(fill: Fill, drains: list[LiveDrain], ref: Reference) -> None:
    print()
    print(
        f"1. Sender CPU per event draining a backlog of {fill.accepted:,} events: a running sender is handed "
        f"the backlog's files at once (start-up excluded), {len(drains)} round(s)"
    )
    print(
        f"  {'round':<7}{'delivered':>11}{'seconds':>9}{'events/s':>11}{'sender CPU s':>14}"
        f"{'us/event':>10}{'devserver CPU s':>17}{'requests':>10}"
    )
    for i, d in enumerate(drains, 1):
        print(
            f"  {i:<7}{d.delivered:>11,}{d.seconds:>9.2f}{d.rate:>11,.0f}{d.sender_cpu_s:>14.2f}"
            f"{d.cpu_us:>10.2f}{d.devserver_cpu_s:>17.2f}{d.requests:>10}"
            + ("" if d.ok else "  <- did not finish: see Checks")
        )
    print()
    print(
        f"2. The reference: the same {ref.events:,} events batched by the product's intake ({ref.batches} "
        f"bodies, {ref.body_bytes / 1e6:.0f} MB of JSON, {ref.body_bytes / max(ref.events, 1):.0f} B/event)"
    )
    print(
        f"  zlib level 1: {ref.zlib_us:.3f} us/event, "
        f"{ref.body_bytes / max(ref.zlib_bytes, 1):.1f}x smaller; "
        f"the sender's gzip ({compression.IMPLEMENTATION} level {GZIP_LEVEL}): {ref.product_gzip_us:.3f} "
        f"us/event, {ref.body_bytes / max(ref.product_gzip_bytes, 1):.1f}x smaller"
    )


def best_fast(runs: list[E2ERun], producers: int) -> E2ERun | None:
    fast = [r for r in runs if r.producers == producers and r.kind == FAST and not r.errors]
    return max(fast, key=lambda r: r.rate) if fast else None


def best_sdk(runs: list[E2ERun], producers: int) -> E2ERun | None:
    sdk = [r for r in runs if r.producers == producers and r.kind == SDK]
    return max(sdk, key=lambda r: r.rate) if sdk else None


@dataclass
class Verdicts:
    cpu_drain: float  # sender CPU per event / zlib-1 per event
    cpu_steady: float
    vs_sdk: float  # 4 producers

    @property
    def cpu_met(self) -> bool:
        return 0 < max(self.cpu_drain, self.cpu_steady) <= TARGET_CPU_VS_ZLIB

    @property
    def sdk_met(self) -> bool:
        return self.vs_sdk >= TARGET_VS_SDK


def print_summary(drains: list[LiveDrain], ref: Reference, runs: list[E2ERun]) -> Verdicts:
    """The issue's figures side by side."""
    best = min((d for d in drains if d.ok), key=lambda d: d.cpu_us, default=drains[0])
    steady = best_fast(runs, PRODUCER_COUNTS[-1])
    zlib_us = ref.zlib_us or float("nan")
    print()
    print("Side by side (this run)")
    print(f"  {'':<46}{'sender CPU':>12}{'zlib-1 ref':>12}{'ratio':>8}   target")
    rows = [(f"draining a {best.backlog:,}-event backlog (best round)", best.cpu_us)]
    for n in PRODUCER_COUNTS:
        run = best_fast(runs, n)
        if run is not None:
            rows.append((f"steady state, {n} producer(s) flat out", run.cpu_us))
    for label, us_ in rows:
        print(
            f"  {label:<46}{us_:>9.2f} us{zlib_us:>9.2f} us{us_ / zlib_us:>7.2f}x"
            f"   <= {TARGET_CPU_VS_ZLIB}x: {verdict(us_ / zlib_us <= TARGET_CPU_VS_ZLIB)}"
        )
    print(f"  drain rate: {best.rate:,.0f} events/s (the files' arrival to the last event at the data plane)")
    ratio_4 = 0.0
    for n in PRODUCER_COUNTS:
        fast, sdk = best_fast(runs, n), best_sdk(runs, n)
        if fast is None or sdk is None:
            continue
        ratio = fast.rate / sdk.rate if sdk.rate else float("inf")
        target = (
            f"   >= {TARGET_VS_SDK:.0f}x: {verdict(ratio >= TARGET_VS_SDK)}"
            if n == PRODUCER_COUNTS[-1]
            else ""
        )
        print(
            f"  end to end, {n} producer(s): rudder_fast {fast.rate:,.0f} vs rudder-sdk-python "
            f"{sdk.rate:,.0f} delivered events/s: {ratio:.1f}x{target}"
        )
        if n == PRODUCER_COUNTS[-1]:
            ratio_4 = ratio
    return Verdicts(
        cpu_drain=best.cpu_us / zlib_us,
        cpu_steady=steady.cpu_us / zlib_us if steady is not None else float("inf"),
        vs_sdk=ratio_4,
    )


def print_e2e(runs: list[E2ERun], plan: Plan) -> None:
    print()
    print(
        f"3. End to end: N forked producers each emit {plan.e2e_events:,} events as fast as they can, "
        "while they are delivered (rudder_fast: a running sender; the SDK: its own thread in each producer)"
    )
    print(
        f"  {'procs':>5}  {'variant':<20}{'sent':>10}{'delivered':>11}{'emit s':>9}{'delivered s':>13}"
        f"{'lag s':>7}{'delivered ev/s':>16}"
    )
    for r in runs:
        print(
            f"  {r.producers:>5}  {r.kind:<20}{r.sent:>10,}{r.delivered:>11,}{r.emit_s:>9.2f}"
            f"{r.delivered_s:>13.2f}{r.delivered_s - r.emit_s:>7.2f}{r.rate:>16,.0f}"
            + (
                f"   sender CPU {r.sender_cpu_s:.2f} s = {r.cpu_us:.2f} us/event, RSS "
                f"{mib(r.sender.max_rss_kb)} MiB"
                if r.sender
                else ""
            )
        )
    print(
        "  (emit s: until the last call returned; delivered s: until the data plane held every event, polled "
        f"every {STATS_POLL_S * 1000:.0f} ms; lag s: the difference; sender CPU: over delivered s; a fresh "
        "devserver per run)"
    )


def print_memory(rows: list[DrainRun]) -> bool:
    print()
    print("4. Sender memory: peak RSS (VmHWM) of `rudder-fast-sender --drain` by backlog")
    print(f"  {'backlog':>10}{'delivered':>11}{'drain s':>9}{'events/s':>11}{'max RSS MiB':>13}")
    for r in rows:
        rate = f"{r.rate:>11,.0f}" if r.backlog else f"{'':>11}"
        print(
            f"  {r.backlog:>10,}{r.delivered:>11,}{r.sender.wall_s:>9.2f}{rate}{mib(r.sender.max_rss_kb):>13}"
        )
    small, large = rows[-2], rows[-1]
    growth = large.sender.max_rss_kb / small.sender.max_rss_kb
    met = growth <= TARGET_RSS_GROWTH
    print(
        f"  {large.backlog:,} vs {small.backlog:,} events: {growth:.2f}x "
        f"({(large.sender.max_rss_kb - small.sender.max_rss_kb) / 1024:+.1f} MiB)"
    )
    print(f"  target: flat (within {TARGET_RSS_GROWTH}x): {verdict(met)}")
    return met


def check_drain(label: str, run: DrainRun, checks: list[str]) -> None:
    s = run.sender
    statuses = " " + ", ".join(f"{n} x {k}" for k, n in run.statuses.items()) if run.statuses else ""
    checks.append(
        f"  {label}: sender exit {s.code}{' (' + s.note + ')' if s.note else ''}, {run.delivered:,} of "
        f"{run.backlog:,} delivered in {run.requests} requests{statuses}, {run.segments_left} segment(s) "
        f"left: {'OK' if run.ok else 'MISMATCH'}"
    )


def check_live_drain(label: str, run: LiveDrain, checks: list[str]) -> None:
    s = run.sender
    exit_ = f"sender exit {s.code}{' (' + s.note + ')' if s.note else ''}" if s else "no sender"
    statuses = " " + ", ".join(f"{n} x {k}" for k, n in run.statuses.items()) if run.statuses else ""
    checks.append(
        f"  {label}: {exit_}, {run.delivered:,} of {run.backlog:,} delivered in {run.requests} requests"
        f"{statuses}, {run.segments_left} segment(s) left: {'OK' if run.ok else 'MISMATCH'}"
    )
    for err in run.errors:
        checks.append(f"    {err}")


def check_e2e(run: E2ERun, checks: list[str]) -> None:
    expected = run.producers * run.per_producer
    ok = run.sent == expected and run.delivered == run.sent and not run.errors
    detail = ""
    if run.kind == SDK:
        detail = f", {run.sdk_errors} upload errors, {run.sdk_warnings} warnings logged"
        ok = ok and not run.sdk_errors and not run.sdk_warnings
    checks.append(
        f"  {run.kind} x{run.producers}: {expected:,} calls, {run.sent:,} accepted, {run.delivered:,} "
        f"delivered{detail}: {'OK' if ok else 'MISMATCH'}"
    )
    for err in run.errors:
        checks.append(f"    {err}")
    if run.first_warning:
        checks.append(f"    first warning: {run.first_warning}")


def drain_json(run: DrainRun) -> dict[str, Any]:
    s = run.sender
    return {
        "backlog": run.backlog,
        "delivered": run.delivered,
        "rate": run.rate,
        "wall_s": s.wall_s,
        "sender_cpu_s": s.cpu_s,
        "sender_max_rss_kb": s.max_rss_kb,
        "devserver_cpu_s": run.devserver_cpu_s,
        "requests": run.requests,
        "ok": run.ok,
    }


def live_drain_json(run: LiveDrain) -> dict[str, Any]:
    return {
        "backlog": run.backlog,
        "delivered": run.delivered,
        "seconds": run.seconds,
        "rate": run.rate,
        "sender_cpu_s": run.sender_cpu_s,
        "sender_cpu_us_per_event": run.cpu_us,
        "devserver_cpu_s": run.devserver_cpu_s,
        "requests": run.requests,
        "ok": run.ok,
    }


def e2e_json(run: E2ERun) -> dict[str, Any]:
    return {
        "kind": run.kind,
        "producers": run.producers,
        "per_producer": run.per_producer,
        "sent": run.sent,
        "delivered": run.delivered,
        "emit_s": run.emit_s,
        "delivered_s": run.delivered_s,
        "rate": run.rate,
        "sender_cpu_s": run.sender_cpu_s if run.sender else None,
        "sender_cpu_us_per_event": run.cpu_us if run.sender else None,
        "sender_max_rss_kb": run.sender.max_rss_kb if run.sender else None,
        "sdk_errors": run.sdk_errors,
        "sdk_warnings": run.sdk_warnings,
        "errors": run.errors,
    }


def run_e2e_part(plan: Plan, base: Path, log: IO[bytes], checks: list[str]) -> list[E2ERun]:
    """Part 3: end to end, 1 and 4 producers; the rudder_fast runs (cheap) before and after the SDK's."""
    e2e: list[E2ERun] = []
    for n in PRODUCER_COUNTS:
        for kind in [FAST, SDK] + [FAST] * (plan.e2e_fast_repeats - 1):
            e2e.append(run_e2e(kind, n, plan.e2e_events, base, log))
    for run in e2e:
        check_e2e(run, checks)
    return e2e


def run_memory_part(
    plan: Plan, base: Path, log: IO[bytes], fill_procs: int, checks: list[str]
) -> list[DrainRun]:
    """Part 4: the sender draining a small and a large backlog."""
    mem: list[DrainRun] = []
    for events in (plan.mem_small, plan.mem_large):
        spool = base / f"mem-{events}"
        mem_fill = fill_spool(spool, events, fill_procs)
        checks += [f"  fill {events:,}: {err}" for err in mem_fill.errors]
        mem.append(run_drain(spool, mem_fill.accepted, log))
        check_drain(f"memory drain of {events:,}", mem[-1], checks)
        shutil.rmtree(spool, ignore_errors=True)
    return mem


def print_checks(checks: list[str], base: Path, log: IO[bytes]) -> None:
    print()
    print("Checks")
    for line in checks:
        print(line)
    if any("MISMATCH" in c for c in checks):
        log.flush()
        tail = (base / "subprocesses.log").read_bytes()[-3000:].decode("utf-8", "replace")
        print("  what the devservers and senders logged last:")
        for line in tail.splitlines()[-15:]:
            print(f"    {line}")
    print()


def run_all(plan: Plan, base: Path, log: IO[bytes]) -> dict[str, Any]:
    """Runs and prints every part; returns the figures (what ``--json`` writes)."""
    started = time.perf_counter()
    cpus = os.cpu_count() or 1
    fill_procs = max(2, min(4, cpus))
    checks: list[str] = []
    load_start = list(os.getloadavg())
    print(
        f"rudder_fast send benchmark ({plan.name}): Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {cpus} CPU(s), load average {load()}, "
        f"spools on {filesystem_of(base)} ({base}); the sender gzips with {compression.IMPLEMENTATION}, "
        f"per-event loops in {LOOPS}; in Python, CRC-32 by {framing.CRC32_IMPLEMENTATION}, plain tracks read "
        f"by {RECORD_READER}",
        flush=True,
    )

    # Parts 1 and 2: one backlog, drained by the sender (a fresh copy each round), and the reference.
    master = base / "backlog"
    fill = fill_spool(master, plan.drain_events, fill_procs)
    spool_bytes = sum(p.stat().st_size for p in list_segments(SpoolPaths(master).segments))
    print(
        f"event: track({EVENT!r}) with {len(PROPERTIES)} properties (a nested dict, a list); backlog of "
        f"{fill.accepted:,} events written by {fill_procs} processes in {fill.seconds:.1f} s "
        f"({fill.accepted / fill.seconds:,.0f} events/s), {spool_bytes / max(fill.accepted, 1):.0f} B each "
        "in the spool"
    )
    checks += [f"  fill: {err}" for err in fill.errors]
    drains = [run_live_drain(master, base / f"drain-{r}", fill.accepted, log) for r in range(plan.rounds)]
    for i, dr in enumerate(drains, 1):
        check_live_drain(f"drain round {i}", dr, checks)
    ref = run_reference(master, base / "reference", plan.gzip_passes)
    ok = ref.events == fill.accepted
    checks.append(f"  reference: {ref.events:,} events batched: {'OK' if ok else 'MISMATCH'}")
    shutil.rmtree(master, ignore_errors=True)
    print_drain(fill, drains, ref)

    # Part 3: end to end; the rudder_fast runs (cheap) before and after the SDK's.
    e2e = run_e2e_part(plan, base, log, checks)
    print_e2e(e2e, plan)

    # Part 4: sender memory by backlog size.
    empty = run_drain(base / "empty", 0, log)
    check_drain("empty-spool drain", empty, checks)
    mem = [empty, *run_memory_part(plan, base, log, fill_procs, checks)]
    met_mem = print_memory(mem)
    verdicts = print_summary(drains, ref, e2e)
    print_checks(checks, base, log)
    print(
        f"Summary: sender CPU <= {TARGET_CPU_VS_ZLIB}x zlib-1 {verdict(verdicts.cpu_met)} (draining "
        f"{verdicts.cpu_drain:.2f}x, steady {verdicts.cpu_steady:.2f}x), >= {TARGET_VS_SDK:.0f}x "
        f"rudder-sdk-python {verdict(verdicts.sdk_met)} ({verdicts.vs_sdk:.1f}x), sender memory flat "
        f"{verdict(met_mem)}; load average {load()}; took {time.perf_counter() - started:.1f} s"
    )
    return {
        "bench": "send",
        "plan": plan.name,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": cpus,
        "filesystem": filesystem_of(base),
        "gzip": compression.IMPLEMENTATION,
        "crc32": framing.CRC32_IMPLEMENTATION,
        "record_reader": RECORD_READER,
        "loops": LOOPS,
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
        "fill": {"events": fill.accepted, "seconds": fill.seconds, "processes": fill_procs},
        "drain": [live_drain_json(d) for d in drains],
        "reference": {
            "events": ref.events,
            "batches": ref.batches,
            "body_bytes": ref.body_bytes,
            "zlib1_us_per_event": ref.zlib_us,
            "zlib1_bytes": ref.zlib_bytes,
            "sender_gzip_us_per_event": ref.product_gzip_us,
            "sender_gzip_bytes": ref.product_gzip_bytes,
        },
        "cpu_vs_zlib1": {"drain": verdicts.cpu_drain, "steady": verdicts.cpu_steady},
        "e2e": [e2e_json(r) for r in e2e],
        "vs_sdk": verdicts.vs_sdk,
        "memory": [drain_json(m) for m in mem],
        "targets": {
            "cpu_vs_zlib1": TARGET_CPU_VS_ZLIB,
            "vs_sdk": TARGET_VS_SDK,
            "rss_growth": TARGET_RSS_GROWTH,
        },
        "verdicts": {"cpu": verdicts.cpu_met, "vs_sdk": verdicts.sdk_met, "memory_flat": met_mem},
        "checks": checks,
        "checks_ok": not any("MISMATCH" in c for c in checks),
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short run (< 1 min) for CI")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to make the temporary spools (default: the system temp dir)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the measured figures here as JSON"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwind, so that every subprocess and temp dir is cleaned up

    signal.signal(signal.SIGTERM, terminated)
    base = Path(tempfile.mkdtemp(prefix="rudder-fast-bench-send-", dir=args.dir))
    try:
        with open(base / "subprocesses.log", "wb") as log:
            figures = run_all(plan, base, log)
        if args.json is not None:
            args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
