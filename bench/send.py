"""How fast does ``rudder-fast-sender`` deliver? Compared, in one run, with the floor and with the peer.

Four parts, each against the stand-in data plane (``rudder-fast devserver``, a fresh subprocess per
measurement, started without ``--out`` so that it only decompresses, parses, validates and counts):

1. **drain rate**: a spool is pre-filled with a backlog of realistic ``track`` events by several forked
   processes; ``rudder-fast-sender --drain`` (the real console script, as a subprocess) is timed from
   start to exit. Its CPU time comes from ``os.wait4`` (that child's own rusage), its peak RSS from
   ``VmHWM`` sampled while it runs (``ru_maxrss`` is useless here: see :func:`peak_rss_kb`).
2. **the floor**: the same spool's segments, in this process, without HTTP: read + ``FrameDecoder`` +
   ``msgpack.unpackb`` + ``WireMapper.event`` + ``orjson.dumps`` + ``build_body`` + ``gzip_bytes``, in
   batches of at most 1,000,000 bytes (the sender's default). Floor and drain alternate in rounds (the
   drain works on a copy of the backlog, since it deletes what it delivered), and the floor's time is
   broken down by stage.
3. **end to end**: 1 and 4 forked producers each emit N events as fast as they can while a running
   sender (no ``--drain``) delivers them; timed from the producers' start to the moment the data plane
   has them all (polled every 10 ms). The same with rudder-sdk-python 2.1.9: each producer has its own
   ``Client`` (gzip on, ``upload_size=100``, its default, ``max_queue_size=100000`` so that nothing is
   dropped) and calls ``track`` N times, then ``flush`` and ``shutdown``. In the full run the rudder_fast
   runs (cheap) are done twice, before and after the SDK's run, and the best one is compared.
4. **sender memory**: max RSS of the sender draining an empty spool, a small and a large backlog.

The machine may be shared: CPU times are printed next to wall times, and the load average at the start
and the end. This is a report, not a test: it always exits 0 when it ran. ``--quick`` is the short
version run by ``scripts/test``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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

import msgpack
import orjson
import psutil

from rudder_fast import Emitter, __version__, config
from rudder_fast.batching import BODY_OVERHEAD, PER_EVENT_OVERHEAD, build_body
from rudder_fast.framing import FRAME_EVENT, HEADER_SIZE, NEED_DATA, Frame, FrameDecoder
from rudder_fast.layout import SpoolPaths
from rudder_fast.tail import SegmentTail, list_segments
from rudder_fast.transport import gzip_bytes
from rudder_fast.wire import WireMapper

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the helpers shared with the tests
from _common import EVENT, FAST, PROPERTIES, SDK, WRITE_KEY  # a sibling module: bench/ is not a package

from tests.support.devserver import DevServer
from tests.support.processes import HOST, console_script

USER_COUNT: Final = 1_000  # each producer cycles through this many user ids

TARGET_DRAIN_RATE: Final = 150_000.0  # events/s...
TARGET_DRAIN_VS_FLOOR: Final = 1 / 3  # ...or this share of the floor measured in the same run
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
    rounds: int  # floor/drain rounds, alternating
    breakdown_passes: int  # best of this many passes per stage
    e2e_events: int  # per producer
    e2e_fast_repeats: int  # rudder_fast runs per producer count (around the SDK's one)
    mem_small: int
    mem_large: int


QUICK: Final = Plan(
    "quick",
    drain_events=300_000,
    rounds=1,
    breakdown_passes=2,
    e2e_events=25_000,
    e2e_fast_repeats=1,
    mem_small=10_000,
    mem_large=200_000,
)
FULL: Final = Plan(
    "full",
    drain_events=300_000,
    rounds=3,
    breakdown_passes=5,
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


# -- parts 1 and 2: drain rate and floor -----------------------------------------------------------


@dataclass
class FloorRun:
    events: int
    batches: int
    body_bytes: int
    gzip_bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass(frozen=True)
class BatchLimits:
    max_bytes: int
    max_events: int


def run_floor(spool: Path, limits: BatchLimits) -> FloorRun:  # noqa: C901 - the sender's loop, inlined
    """Everything the sender does to a backlog except HTTP and bookkeeping, streamed as the sender does."""
    gc.collect()
    t0 = time.perf_counter()
    mapper = WireMapper(__version__)
    to_event = mapper.event
    unpackb = msgpack.unpackb
    dumps = orjson.dumps
    max_events = limits.max_events
    max_cost = limits.max_bytes - BODY_OVERHEAD
    events = batches = body_total = gz_total = 0
    stubs: list[bytes] = []
    cost = 0

    def flush() -> None:
        nonlocal stubs, cost, batches, body_total, gz_total
        body = build_body(stubs, mapper.clock.format_ns(time.time_ns()))
        body_total += len(body)
        gz_total += len(gzip_bytes(body))
        batches += 1
        stubs = []
        cost = 0

    for path in list_segments(SpoolPaths(spool).segments):
        tail = SegmentTail.open(path)
        if tail is None:
            continue
        nonce = tail.nonce
        decoder = tail.decoder
        try:
            while True:
                got = tail.read_more()
                while True:
                    item = decoder.next()
                    if item is NEED_DATA:
                        break
                    if type(item) is not Frame or item.type != FRAME_EVENT:
                        continue
                    stub = dumps(to_event(unpackb(item.payload), nonce, item.seq))[:-1]
                    c = len(stub) + PER_EVENT_OVERHEAD
                    if len(stubs) >= max_events or cost + c > max_cost:
                        flush()
                    stubs.append(stub)
                    cost += c
                    events += 1
                if not got:
                    break
        finally:
            tail.close()
    if stubs:
        flush()
    return FloorRun(events, batches, body_total, gz_total, time.perf_counter() - t0)


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


@dataclass
class Stage:
    label: str
    ns_per_event: float
    top: bool  # a top-level stage (the top-level ones add up to the whole)


def best_of(fn: Callable[[], object], passes: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=passes))


def run_breakdown(  # noqa: C901, PLR0915 - the floor's loop, stage by stage
    spool: Path, limits: BatchLimits, passes: int
) -> tuple[list[Stage], int, float]:
    """Each stage of the floor timed on its own over one segment: (stages, events, devserver ns/event).

    Stage by stage over lists (GC off, as the streaming loop frees everything at once and seldom lets
    the collector run); best of ``passes`` passes.
    """
    paths = list_segments(SpoolPaths(spool).segments)
    path = max(paths, key=lambda p: p.stat().st_size)
    tail = SegmentTail.open(path)
    assert tail is not None
    nonce = tail.nonce
    tail.close()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read() -> list[bytes]:
        chunks, pos = [], HEADER_SIZE
        while chunk := os.pread(fd, 1 << 20, pos):
            chunks.append(chunk)
            pos += len(chunk)
        return chunks

    def decode(chunks: list[bytes]) -> list[Frame]:
        decoder = FrameDecoder(HEADER_SIZE)
        frames: list[Frame] = []
        append = frames.append
        nxt = decoder.next
        for chunk in chunks:
            decoder.feed(chunk)
            while (item := nxt()) is not NEED_DATA:
                if type(item) is Frame and item.type == FRAME_EVENT:
                    append(item)
        return frames

    mapper = WireMapper(__version__)
    to_event = mapper.event
    clock = mapper.clock
    unpackb = msgpack.unpackb
    dumps = orjson.dumps
    crc32 = zlib.crc32
    sent_at = clock.format_ns(time.time_ns())
    max_cost = limits.max_bytes - BODY_OVERHEAD

    chunks = read()
    frames = decode(chunks)
    payloads = [f.payload for f in frames]
    seqs = [f.seq for f in frames]
    records = [unpackb(p) for p in payloads]
    wire = [to_event(r, nonce, s) for r, s in zip(records, seqs, strict=True)]
    stubs = [dumps(e)[:-1] for e in wire]
    groups: list[list[bytes]] = [[]]
    cost = 0
    for stub in stubs:
        c = len(stub) + PER_EVENT_OVERHEAD
        if len(groups[-1]) >= limits.max_events or cost + c > max_cost:
            groups.append([])
            cost = 0
        groups[-1].append(stub)
        cost += c
    bodies = [build_body(g, sent_at) for g in groups]
    gzipped = [gzip_bytes(b) for b in bodies]
    n = len(frames)

    rows: list[tuple[str, Callable[[], object], bool]] = [
        ("os.pread, 1 MiB at a time", read, True),
        ("FrameDecoder.next (sync, length, CRC, slices, Frame)", lambda: decode(chunks), True),
        ("  of which zlib.crc32 over each payload", lambda: [crc32(p) for p in payloads], False),
        (
            "  of which building the Frame (frozen dataclass)",
            lambda: [Frame(FRAME_EVENT, s, p, 0, 0) for s, p in zip(seqs, payloads, strict=True)],
            False,
        ),
        ("msgpack.unpackb(payload)", lambda: [unpackb(p) for p in payloads], True),
        (
            "WireMapper.event(record)",
            lambda: [to_event(r, nonce, s) for r, s in zip(records, seqs, strict=True)],
            True,
        ),
        ("  of which IsoClock.format_ns", lambda: [clock.format_ns(r[1]) for r in records], False),
        ("orjson.dumps(event)[:-1]", lambda: [dumps(e)[:-1] for e in wire], True),
        ("build_body, per batch of <= 1,000,000 B", lambda: [build_body(g, sent_at) for g in groups], True),
        ("gzip_bytes (zlib level 1), per batch", lambda: [gzip_bytes(b) for b in bodies], True),
    ]  # fmt: skip
    stages: list[Stage] = []
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for label, fn, top in rows:
            stages.append(Stage(label, best_of(fn, passes) / n * 1e9, top))
        dev_s = best_of(lambda: [orjson.loads(zlib.decompress(g, 47)) for g in gzipped], passes)
    finally:
        if was_enabled:
            gc.enable()
        os.close(fd)
    return stages, n, dev_s / n * 1e9


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
    sdk_errors: int = 0
    sdk_warnings: int = 0
    first_warning: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.delivered / self.delivered_s if self.delivered_s else 0.0


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
            t0 = group.go()
            end_ns, delivered = wait_delivered(dev, sender, group, out, timeout_s)
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


def print_drain(
    plan: Plan, fill: Fill, floors: list[FloorRun], drains: list[DrainRun], empty: DrainRun
) -> bool:
    print()
    print(
        f"1+2. Drain vs floor: a backlog of {fill.accepted:,} events ({plan.rounds} round(s), floor and "
        "drain alternating; the drain on a fresh copy of the backlog each time)"
    )
    print(
        f"  {'round':<7}{'floor ev/s':>12}{'drain ev/s':>12}{'drain/floor':>12}{'drain s':>9}"
        f"{'sender CPU s':>14}{'devserver CPU s':>17}{'max RSS MiB':>13}{'requests':>10}"
    )
    for i, (fl, dr) in enumerate(zip(floors, drains, strict=True), 1):
        print(
            f"  {i:<7}{fl.rate:>12,.0f}{dr.rate:>12,.0f}{dr.rate / fl.rate:>11.2f}x{dr.sender.wall_s:>9.2f}"
            f"{dr.sender.cpu_s:>14.2f}{dr.devserver_cpu_s:>17.2f}{mib(dr.sender.max_rss_kb):>13}{dr.requests:>10}"
            + ("" if dr.ok else "  <- did not finish: see Checks")
        )
    best_floor = max(floors, key=lambda f: f.rate)
    best_drain = max(drains, key=lambda d: d.rate)
    ratio = best_drain.rate / best_floor.rate
    print(f"  {'best':<7}{best_floor.rate:>12,.0f}{best_drain.rate:>12,.0f}{ratio:>11.2f}x")
    per_event_floor = 1e6 / best_floor.rate
    per_event_sender = best_drain.sender.cpu_s / best_drain.delivered * 1e6
    per_event_dev = best_drain.devserver_cpu_s / best_drain.delivered * 1e6
    print(
        f"  floor: one process, no HTTP, {best_floor.batches} batches, "
        f"{best_floor.body_bytes / 1e6:.0f} MB of JSON gzipped to {best_floor.gzip_bytes / 1e6:.1f} MB; "
        f"{per_event_floor:.2f} us/event"
    )
    print(
        "  drain: `rudder-fast-sender --drain` from start to exit (an empty spool takes "
        f"{empty.sender.wall_s:.2f} s: interpreter, imports, start-up); sender CPU "
        f"{per_event_sender:.2f} us/event (all threads), devserver CPU {per_event_dev:.2f} us/event, "
        f"on {os.cpu_count()} CPU(s) shared by both"
    )
    if best_drain.sender.wall_s > empty.sender.wall_s:
        steady = best_drain.delivered / (best_drain.sender.wall_s - empty.sender.wall_s)
        print(f"  best drain without the empty-spool start-up time: {steady:,.0f} events/s")
    met = best_drain.rate >= TARGET_DRAIN_RATE or ratio >= TARGET_DRAIN_VS_FLOOR
    print(
        f"  target: drain >= {TARGET_DRAIN_RATE:,.0f} events/s, or >= 1/3 of the floor in the same run: "
        f"{verdict(met)} ({best_drain.rate:,.0f} events/s = {ratio:.2f}x the floor)"
    )
    return met


def print_breakdown(
    stages: list[Stage], events: int, devserver_ns: float, passes: int, floor: FloorRun
) -> None:
    print()
    print(
        f"  Where the floor's time goes (ns per event over one segment of {events:,} events, each stage on "
        f"its own, best of {passes}, GC off)"
    )
    total = sum(s.ns_per_event for s in stages if s.top)
    for s in stages:
        share = f"{100 * s.ns_per_event / total:5.1f}%" if s.top else ""
        print(f"    {s.label:<58}{s.ns_per_event:>8.0f} ns {share:>7}")
    print(
        f"    {'sum of the stages':<58}{total:>8.0f} ns = {1e9 / total:,.0f} events/s (the streaming floor: "
        f"{1e9 / floor.rate:,.0f} ns; stage by stage over lists, caches help less)"
    )
    print(
        f"    the stand-in data plane, per event: zlib.decompress + orjson.loads {devserver_ns:.0f} ns "
        f"(on the same CPUs as the sender)"
    )


def print_e2e(runs: list[E2ERun], plan: Plan) -> bool:
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
                f"   sender CPU {r.sender.cpu_s:.2f} s, RSS {mib(r.sender.max_rss_kb)} MiB"
                if r.sender
                else ""
            )
        )
    met = False
    for n in PRODUCER_COUNTS:
        fast = [r for r in runs if r.producers == n and r.kind == FAST]
        sdk = [r for r in runs if r.producers == n and r.kind == SDK]
        if not fast or not sdk:
            continue
        best = max(fast, key=lambda r: r.rate)
        peer = max(sdk, key=lambda r: r.rate)
        ratio = best.rate / peer.rate if peer.rate else float("inf")
        print(
            f"  {n} producer(s): rudder_fast {best.rate:,.0f} vs rudder-sdk-python {peer.rate:,.0f} "
            f"delivered events/s: {ratio:.1f}x"
        )
        if n == PRODUCER_COUNTS[-1]:
            met = ratio >= TARGET_VS_SDK
            print(
                f"  target: >= {TARGET_VS_SDK:.0f}x rudder-sdk-python's delivered events/s with {n} "
                f"producers: {verdict(met)} ({ratio:.1f}x)"
            )
    print(
        "  (emit s: until the last call returned; delivered s: until the data plane held every event, polled "
        f"every {STATS_POLL_S * 1000:.0f} ms; lag s: the difference; a fresh devserver per run)"
    )
    return met


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
        "sender_cpu_s": run.sender.cpu_s if run.sender else None,
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
    limits = BatchLimits(config.MAX_BATCH_BYTES, config.MAX_BATCH_EVENTS)
    checks: list[str] = []
    load_start = list(os.getloadavg())
    print(
        f"rudder_fast send benchmark ({plan.name}): Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {cpus} CPU(s), load average {load()}, "
        f"spools on {filesystem_of(base)} ({base})",
        flush=True,
    )

    # Parts 1 and 2: one backlog; floor and drain alternate, the drain on a copy.
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
    empty = run_drain(base / "empty", 0, log)
    check_drain("empty-spool drain", empty, checks)
    floors: list[FloorRun] = []
    drains: list[DrainRun] = []
    for r in range(plan.rounds):
        for what in ("floor", "drain") if r % 2 == 0 else ("drain", "floor"):
            if what == "floor":
                floors.append(run_floor(master, limits))
                continue
            work = base / f"drain-{r}"
            shutil.copytree(master, work)
            drains.append(run_drain(work, fill.accepted, log))
            shutil.rmtree(work, ignore_errors=True)
    for i, dr in enumerate(drains, 1):
        check_drain(f"drain round {i}", dr, checks)
    for i, fl in enumerate(floors, 1):
        ok = fl.events == fill.accepted
        checks.append(f"  floor round {i}: {fl.events:,} events: {'OK' if ok else 'MISMATCH'}")
    met_drain = print_drain(plan, fill, floors, drains, empty)
    stages, seg_events, dev_ns = run_breakdown(master, limits, plan.breakdown_passes)
    print_breakdown(stages, seg_events, dev_ns, plan.breakdown_passes, max(floors, key=lambda f: f.rate))
    shutil.rmtree(master, ignore_errors=True)

    # Part 3: end to end; the rudder_fast runs (cheap) before and after the SDK's.
    e2e = run_e2e_part(plan, base, log, checks)
    met_sdk = print_e2e(e2e, plan)

    # Part 4: sender memory by backlog size.
    mem = [empty, *run_memory_part(plan, base, log, fill_procs, checks)]
    met_mem = print_memory(mem)
    print_checks(checks, base, log)
    print(
        f"Summary: drain {verdict(met_drain)}, vs rudder-sdk-python {verdict(met_sdk)}, sender memory flat "
        f"{verdict(met_mem)}; load average {load()}; took {time.perf_counter() - started:.1f} s"
    )
    best_floor = max(floors, key=lambda f: f.rate)
    best_drain = max(drains, key=lambda d: d.rate)
    return {
        "bench": "send",
        "plan": plan.name,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": cpus,
        "filesystem": filesystem_of(base),
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
        "fill": {"events": fill.accepted, "seconds": fill.seconds, "processes": fill_procs},
        "floor": [{"events": f.events, "batches": f.batches, "rate": f.rate} for f in floors],
        "drain": [drain_json(d) for d in drains],
        "empty_drain": drain_json(empty),
        "best_floor_rate": best_floor.rate,
        "best_drain_rate": best_drain.rate,
        "drain_vs_floor": best_drain.rate / best_floor.rate,
        "breakdown_ns_per_event": [[st.label, st.ns_per_event, st.top] for st in stages],
        "devserver_ns_per_event": dev_ns,
        "e2e": [e2e_json(r) for r in e2e],
        "memory": [drain_json(m) for m in mem],
        "targets": {
            "drain_rate": TARGET_DRAIN_RATE,
            "drain_vs_floor": TARGET_DRAIN_VS_FLOOR,
            "vs_sdk": TARGET_VS_SDK,
            "rss_growth": TARGET_RSS_GROWTH,
        },
        "verdicts": {"drain": met_drain, "vs_sdk": met_sdk, "memory_flat": met_mem},
        "checks": checks,
        "checks_ok": not any("MISMATCH" in c for c in checks),
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short run (< 40 s) for CI")
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
